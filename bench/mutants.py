"""
Mutation testing of the pure modules with mutmut; run it as bench/mutants.sh.

Each module is mutated in its own copy of the tree (a temporary directory),
and every mutant is judged by the module's own test files -- of those, only
the tests that need no PostgreSQL (bench/mutants_pytest.py deselects the
rest).  Prints, per module and overall, the share of mutants killed, and
lists the survivors with the line as mutated.

A mutant that changes nothing observable (an equivalent mutant) is listed in
bench/mutants_equivalent.txt with the line as mutated and why: it is left out
of the score and printed as such, as long as the mutant still changes that
line (an entry gone stale is reported and counts again).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
EQUIVALENT = BENCH / "mutants_equivalent.txt"

# name -> (files mutated, test files that judge them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "ppc": (["smartyd/ppc.py"], ["tests/test_ppc.py"]),
    "tokens": (["smartyd/streams/tokens.py"], ["tests/test_streams_tokens.py"]),
    "osmp_protocol": (["smartyd/osmp/protocol.py"], ["tests/test_osmp_protocol.py"]),
    "periods": (["smartyd/billing/periods.py"],
                ["tests/test_billing.py", "tests/test_billing_periods.py"]),
    "signature": (["smartyd/billing_api/signature.py"],
                  ["tests/test_billing_api.py", "tests/test_billing_api_wire.py"]),
    "params": (["smartyd/billing_api/params.py"],
               ["tests/test_billing_api.py", "tests/test_billing_api_wire.py"]),
}

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
SURVIVED = {"survived", "no tests"}
GOAL = 90.0


def setup_cfg(mutate: list[str], tests: list[str]) -> str:
    def lines(values):
        return "".join(f"\n    {v}" for v in values)

    return (
        "[mutmut]\n"
        "source_paths=smartyd\n"
        f"only_mutate={lines(mutate)}\n"
        "also_copy=pytest.ini\n"
        # pytest-twisted's reactor runs once per process: a fresh fork each
        # run.  The fork server has imported the modules (collected the
        # tests): a value computed at import (tokens' _LAYOUTS) is the
        # original's, so a function run at import needs a test that calls it.
        "process_isolation=forkserver\n"
        f"pytest_add_cli_args={lines(['-p', 'mutants_pytest'])}\n"
        f"pytest_add_cli_args_test_selection={lines(tests)}\n"
    )


def load_equivalent() -> dict[str, tuple[str, str]]:
    """name -> (the line as mutated, why it is equivalent)."""
    known = {}
    if EQUIVALENT.exists():
        for raw in EQUIVALENT.read_text("utf-8").splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            # name | old -> new | why  (the change may hold "|" itself)
            name, rest = raw.split(" | ", 1)
            line, why = rest.rsplit(" | ", 1)
            known[name.strip()] = (line.strip(), why.strip())
    return known


def mutated_line(mutmut: str, work: Path, name: str) -> str:
    """The mutant's change (from ``mutmut show``): ``old -> new``, each its first line."""
    out = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    old = [x[1:].strip() for x in lines if x.startswith("-") and not x.startswith("---")]
    new = [x[1:].strip() for x in lines if x.startswith("+") and not x.startswith("+++")]
    if not old and not new:
        return "(no diff: " + (out.stdout.strip().splitlines() or ["?"])[-1] + ")"
    return f"{old[0] if old else ''} -> {new[0] if new else '(removed)'}"


def run_module(name: str, base: Path, mutmut: str, children: int, equivalent: dict,
               only: str | None = None) -> dict:
    mutate, tests = MODULES[name]
    missing = [t for t in tests if not (ROOT / t).exists()]
    if missing:
        raise SystemExit(f"{name}: missing test files {missing}")
    work = base / name
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "smartyd", work / "smartyd", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copy(ROOT / "pytest.ini", work / "pytest.ini")
    (work / "setup.cfg").write_text(setup_cfg(mutate, tests))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(BENCH)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    started = time.monotonic()
    with open(work / "mutmut.log", "w") as log:
        done = subprocess.run([mutmut, "run", "--max-children", str(children)]
                              + ([only] if only else []), cwd=work,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        text = (work / "mutmut.log").read_text("utf-8", "replace")
        # mutmut's spinner redraws its line with carriage returns: keep the rest
        lines = [x for x in re.split(r"[\r\n]+", text)
                 if x.strip() and x[:1] not in "⠁⠂⠄⡀⢀⠠⠐⠈⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"]
        tail = "\n".join(lines[-60:])
        raise SystemExit(f"{name}: mutmut run failed ({done.returncode}):\n{tail}")
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=work,
                             capture_output=True, text=True, check=True).stdout
    statuses = {m: s for m, s in re.findall(r"^\s*(\S+): (.+?)\s*$", listing, re.M)
                if only is None or fnmatch.fnmatch(m, only)}
    result = {"name": name, "seconds": seconds, "killed": 0, "scored": 0,
              "survivors": [], "equivalent": [], "stale": [], "unsure": []}
    for mutant, status in sorted(statuses.items(), key=lambda kv: _natural(kv[0])):
        if status in KILLED:
            result["killed"] += 1
            result["scored"] += 1
            continue
        line = mutated_line(mutmut, work, mutant)
        if mutant in equivalent:
            want, why = equivalent[mutant]
            if want == line:
                result["equivalent"].append((mutant, line, why))
                continue
            result["stale"].append((mutant, want, line))
        result["scored"] += 1
        (result["survivors"] if status in SURVIVED else result["unsure"]).append(
            (mutant, line, status))
    return result


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def share(killed: int, scored: int) -> str:
    return f"{100.0 * killed / scored:5.1f} %" if scored else "  n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    parser.add_argument("--children", type=int, default=int(os.environ.get("CHILDREN", "2")),
                        help="mutants judged at once (default 2, or $CHILDREN)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", metavar="PATTERN",
                        help="judge only the mutants whose name matches (fnmatch), e.g."
                             " 'smartyd.ppc.x_encode*': a smoke run of the set-up")
    args = parser.parse_args()
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}: choose from {', '.join(MODULES)}")
    mutmut = str(Path(sys.executable).parent / "mutmut")
    equivalent = load_equivalent()
    base = Path(tempfile.mkdtemp(prefix="smartyd-mutants-"))
    results = []
    try:
        for name in names:
            r = run_module(name, base, mutmut, args.children, equivalent, args.only)
            results.append(r)
            print(f"{name:14} killed {r['killed']:4}/{r['scored']:<4} {share(r['killed'], r['scored'])}"
                  f"   ({len(r['equivalent'])} equivalent left out, {r['seconds']:.0f} s)",
                  flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    killed = sum(r["killed"] for r in results)
    scored = sum(r["scored"] for r in results)
    print(f"{'overall':14} killed {killed:4}/{scored:<4} {share(killed, scored)}"
          f"   (goal >= {GOAL:.0f} %)")
    for r in results:
        for mutant, line, status in r["survivors"] + r["unsure"]:
            print(f"  {status:9} {mutant}: {line}")
    for r in results:
        for mutant, want, line in r["stale"]:
            print(f"  stale equivalent entry {mutant}: listed {want!r}, now {line!r}")
    equivalents = [e for r in results for e in r["equivalent"]]
    if equivalents:
        print(f"equivalent mutants left out ({EQUIVALENT.relative_to(ROOT)}):")
        for mutant, line, why in equivalents:
            print(f"  {mutant}: {line}  -- {why}")

    def percent(k, n):
        return round(100.0 * k / n, 1) if n else None

    # The figures, as every bench prints them: one JSON object on the last line.
    print(json.dumps({
        "modules": {r["name"]: {
            "killed": r["killed"], "scored": r["scored"],
            "killed_percent": percent(r["killed"], r["scored"]),
            "equivalent": len(r["equivalent"]), "seconds": round(r["seconds"], 1),
            "survivors": [m for m, _, _ in r["survivors"] + r["unsure"]],
        } for r in results},
        "killed": killed, "scored": scored, "killed_percent": percent(killed, scored),
        "goal_percent": GOAL,
    }))


if __name__ == "__main__":
    main()
