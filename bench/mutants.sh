#!/usr/bin/env bash
# Mutation testing of the pure modules: the share of mutants their own tests kill.
#
#   bench/mutants.sh                     # every module (see bench/mutants.py)
#   bench/mutants.sh ppc periods         # some of them
#   PYTHON=/path/to/venv/bin/python CHILDREN=2 bench/mutants.sh
#
# Uses the development virtualenv ($VIRTUAL_ENV, else ./.venv as made by
# ./smartyd-dev) and installs mutmut into it when it is missing or another
# version.  Each module is mutated in a copy under a temporary directory
# (removed at the end), against only its own test files, and of those only
# the tests that need no PostgreSQL: no database is started.
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
have=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null || true)
if [ "$have" != "$MUTMUT_VERSION" ]; then
    echo "installing mutmut==$MUTMUT_VERSION for $PYTHON${have:+ (found $have)}" >&2
    "$PYTHON" -m pip install -q "mutmut==$MUTMUT_VERSION"
fi
exec "$PYTHON" "$ROOT/bench/mutants.py" "$@"
