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
