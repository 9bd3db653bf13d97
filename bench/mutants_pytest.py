"""
A pytest plugin for bench/mutants.sh: of the test files given, keep only the
tests that need no PostgreSQL (no ``pg_dsn`` / ``pg_root`` fixture, directly
or through another fixture).  The modules under mutation are pure; their
tests must be too, so that each mutant is judged in well under a second.
"""

DATABASE_FIXTURES = frozenset({"pg_dsn", "pg_root"})


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        needs_db = DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        (drop if needs_db else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config):
    # Timing is not what a mutant is judged on (the runs are traced, the
    # machine may be busy): no deadlines, no too-slow health check, and the
    # same examples every run so that a verdict does not change by chance.
    from hypothesis import HealthCheck, settings

    settings.register_profile("mutants", deadline=None, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("mutants")
