#!/usr/bin/env bash
# Mutation testing of the pure modules: the share of mutants their own tests kill.
#
#   bench/mutants.sh                     # every module (see bench/mutants.py)
#   bench/mutants.sh ppc periods         # some of them
#   PYTHON=/path/to/venv/bin/python CHILDREN=2 bench/mutants.sh
#
# Needs the development virtualenv ($VIRTUAL_ENV, else ./.venv as made by
# ./smartyd-dev).  mutmut (pinned below) and its dependencies go into a venv
# of their own, ./.venv-mutants (or $MUTANTS_VENV), layered over the
# development one: made and installed into on first use, so the development
# venv stays as setup.py makes it (mutmut's libcst changes how Hypothesis
# reports a failure there).  Each module is mutated in a copy under a
# temporary directory (removed at the end), against only its own test files,
# and of those only the tests that need no PostgreSQL: no database is started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MUTMUT_VERSION=3.8.1

if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        PYTHON=$VIRTUAL_ENV/bin/python
    else
        PYTHON=$ROOT/.venv/bin/python
    fi
fi
if ! [ -x "$PYTHON" ] || ! "$PYTHON" -c "import smartyd, pytest_twisted, hypothesis" 2>/dev/null; then
    echo "missing: smartyd with its test extras for $PYTHON --" \
         "run ./smartyd-dev test once (it makes .venv), or set PYTHON=" >&2
    exit 1
fi
MVENV=${MUTANTS_VENV:-$ROOT/.venv-mutants}
if ! [ -x "$MVENV/bin/python" ]; then
    echo "making $MVENV (mutmut's venv, over the development one)" >&2
    "$PYTHON" -m venv "$MVENV"
fi
# The development venv's packages (smartyd in editable mode, pytest, ...)
# are seen from mutmut's venv through a .pth line.
dev_site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mut_site=$("$MVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$dev_site')" > "$mut_site/smartyd-development-venv.pth"
have=$("$MVENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null || true)
if [ "$have" != "$MUTMUT_VERSION" ]; then
    echo "installing mutmut==$MUTMUT_VERSION into $MVENV${have:+ (found $have)}" >&2
    "$MVENV/bin/python" -m pip install -q "mutmut==$MUTMUT_VERSION"
fi
exec "$MVENV/bin/python" "$ROOT/bench/mutants.py" "$@"
