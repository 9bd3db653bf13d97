"""
Every script under bench/, run as an operator runs it (its own process, its
own flags, tiny sizes), must still set itself up and print its figures, so a
benchmark cannot break silently.  Smoke runs, not measurements: nothing here
is timed, the figures are only checked to be there and to hold together.

To add a benchmark: one L{Bench} entry in BENCHES (the script, the flags that
make it a second or two, the external programs it needs, a check of the
figures it prints).  A script prints its figures as one JSON object on its
last line.  It is skipped, naming the program, only when an external program
(wrk, nginx, ...) is missing; a script that lacks nothing must pass.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from attrs import field, frozen

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 300  # a stuck script fails the test instead of hanging the suite

# Where each external program comes from, for the skip message.
INSTALL = {
    "nginx": "apt-get install -y nginx-light (or nginx)",
    "wrk": "apt-get install -y wrk",
    "taskset": "apt-get install -y util-linux",
    "curl": "apt-get install -y curl",
}


def environment(extra: dict | None = None) -> dict:
    """This checkout's code and this interpreter (twistd, smartyd-admin beside it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)
    env.update(extra or {})
    return env


@frozen
class Bench:
    script: str                              # path in the checkout
    args: tuple[str, ...]                    # tiny sizes: a second or two of work
    check: Callable[[dict], None]            # asserts on the figures (the last line's JSON)
    tools: tuple[str, ...] = ()              # external programs it needs (skip when missing)
    env: dict = field(factory=dict)          # settings a shell script takes from the environment
    unusable: Callable[[], str | None] = lambda: None  # why this machine cannot run it, if so

    def command(self) -> list[str]:
        path = str(ROOT / self.script)
        return [path, *self.args] if path.endswith(".sh") else [sys.executable, path, *self.args]


def positive(figures: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures)


def check_billing(f: dict) -> None:
    assert f["customers"] == f["charged"] == 20, f
    assert f["balance_mismatches"] == 0, f
    assert f["seconds"] >= 0 and f["max_stall_ms"] >= 0, f


def check_billing_api(f: dict) -> None:
    positive(f, "api_per_s", "direct_tps", "api_over_direct")
    assert f["consistency"]["ok"] and f["consistency"]["answered_0"] > 0, f


def check_osmp(f: dict) -> None:
    positive(f, "pay_per_s", "check_per_s", "direct_tps", "pay_over_direct", "check_over_direct")
    assert f["consistency"]["ok"] and f["consistency"]["answered_0"] > 0, f


def check_pg_restart(f: dict) -> None:
    assert len(f["total_s"]) == 1 and f["total_s"][0] > 0, f
    assert len(f["restart_s"]) == 1 and f["restart_s"][0] > 0, f


def check_startup(f: dict) -> None:
    for start in ("cold", "warm", "after_sigkill"):
        positive(f[start], "min_s", "median_s", "max_s")


def check_vod_sync(f: dict) -> None:
    assert f["titles"] == f["first"]["titles"] == f["second"]["titles"] == 20, f
    assert f["first"]["added"] == 20, f
    assert f["second"]["added"] == f["second"]["updated"] == 0, f
    positive(f["first"], "peak_rss_mb")


def check_tvmw(f: dict) -> None:
    assert f["devices"] == 4 and f["all_200"] and f["tokens_200"] == f["tokens_checked"] > 0, f
    positive(f, "logins_per_s", "answers", "answers_per_s", "p99_ms", "cpu_us_per_answer")


def check_import(f: dict) -> None:
    assert f["customers"] == 50, f
    assert set(f["import_s_by_kind"]) >= {"customers", "accounts", "devices", "subscriptions"}, f
    # 50 imported + the bench's own probe account
    assert f["restored_rows"] == {"customers": 51, "accounts": 51, "devices": 50,
                                  "subscriptions": 51}, f
    assert f["checks_during"] > 0 and set(f["check_codes"]) == {"200"}, f
    positive(f, "import_s", "peak_rss_mb", "longest_stall_ms", "backup_s", "restore_s")


def check_mutants(f: dict) -> None:
    assert f["killed"] == f["scored"] == 6 and "ppc" in f["modules"], f


def check_tokens(f: dict) -> None:
    positive(f, "nginx_rps", "workers1_rps", "workers2_rps",
             "nginx_p99_ms", "workers1_p99_ms", "workers2_p99_ms")


def tokens_unusable() -> str | None:
    if (os.cpu_count() or 1) < 2:
        return "bench/tokens.sh needs 2 CPUs (server and wrk pinned apart)"
    nginx = subprocess.run(["nginx", "-V"], capture_output=True, text=True)
    if "--with-http_secure_link_module" not in nginx.stderr + nginx.stdout:
        return "bench/tokens.sh needs nginx with the secure_link module (Debian's nginx-light)"
    return None


BENCHES = [
    Bench("bench/billing.py", ("--customers", "20"), check_billing),
    Bench("bench/billing_api.py", ("--seconds", "1", "--rounds", "1", "--clients", "2",
                                   "--customers", "10", "--pool-size", "2", "--warmup", "0"),
          check_billing_api),
    Bench("bench/osmp.py", ("--seconds", "1", "--rounds", "1", "--terminals", "2",
                            "--accounts", "10", "--pool-size", "2", "--warmup", "0"),
          check_osmp),
    Bench("bench/pg_restart.py", ("--runs", "1"), check_pg_restart),
    Bench("bench/startup.py", ("--runs", "1"), check_startup),
    Bench("bench/vod_sync.py", ("--titles", "20"), check_vod_sync),
    Bench("bench/tvmw.py", ("--devices", "4", "--concurrency", "2", "--seconds", "0.5",
                            "--channels", "2", "--login-concurrency", "2", "--pool-size", "2"),
          check_tvmw),
    Bench("bench/import.py", ("--customers", "50", "--check-rate", "50"), check_import),
    Bench("bench/mutants.sh", ("ppc", "--only", "smartyd.ppc.x_encode*"), check_mutants),
    Bench("bench/tokens.sh", (), check_tokens, tools=("nginx", "wrk", "taskset", "curl"),
          env={"DURATION": "1s", "WARMUP": "0", "CONNECTIONS": "4"}, unusable=tokens_unusable),
]


def skip_if_missing(bench: Bench) -> None:
    for tool in bench.tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{bench.script} needs {tool}, not installed"
                        f" (Debian/Ubuntu: {INSTALL.get(tool, tool)})")
    reason = bench.unusable()
    if reason:
        pytest.skip(reason)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.parametrize("bench", BENCHES, ids=[Path(b.script).name for b in BENCHES])
def test_bench_prints_its_figures(bench):
    skip_if_missing(bench)
    proc = subprocess.run(bench.command(), cwd=ROOT, env=environment(bench.env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, (
        f"{bench.script} exited {proc.returncode}\n--- stderr\n{tail(proc.stderr)}"
        f"\n--- stdout\n{tail(proc.stdout)}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{bench.script} printed nothing"
    try:
        figures = json.loads(lines[-1])
    except ValueError:
        pytest.fail(f"{bench.script}: the last line is not the figures' JSON: {lines[-1]!r}")
    bench.check(figures)


def test_tokens_profile_serves_checks():
    """bench/tokens_profile.py serves until stopped: its token passes, a forged one is refused."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "tokens_profile.py"), "--accounts", "100"],
        cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], RUN_TIMEOUT)
        assert ready, "bench/tokens_profile.py printed no 'port token' line"
        line = proc.stdout.readline()
        assert line, f"bench/tokens_profile.py exited: {tail(proc.stderr.read())}"
        port, token = line.split()
        url = f"http://127.0.0.1:{port}/streams/check?name=ch7&token="
        with urllib.request.urlopen(url + token, timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + token + "x", timeout=10)
        assert refused.value.code == 403
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


# Scripts under bench/ that are not run on their own: what runs them in the suite.
RUN_BY = {
    "bench/mutants.py": "bench/mutants.sh",          # the driver mutants.sh calls
    "bench/mutants_pytest.py": "bench/mutants.sh",   # the test runner of each mutant
    "bench/tokens_profile.py": "test_tokens_profile_serves_checks",
}


def test_every_script_under_bench_has_a_smoke_run():
    """A new benchmark without a BENCHES entry (or RUN_BY) fails here, not silently later."""
    scripts = {f"bench/{p.name}" for p in (ROOT / "bench").iterdir()
               if p.suffix in (".py", ".sh")}
    covered = {b.script for b in BENCHES} | set(RUN_BY)
    assert sorted(scripts - covered) == [], "scripts under bench/ without a smoke run"
    assert sorted(covered - scripts) == [], "smoke runs of scripts no longer under bench/"
