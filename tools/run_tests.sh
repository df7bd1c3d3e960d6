#!/usr/bin/env bash
# The whole test suite: ruff, doctests, unit, integration and consistency
# tests. Sets up the environment first (tools/env.sh). Extra arguments go
# to pytest, e.g. `bash tools/run_tests.sh tests/unittests -k triplet`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
set -euo pipefail
echo "[dampit] ruff" >&2
ruff check dampit recipes templates tests tools
ruff format --check dampit recipes templates tests tools
echo "[dampit] pytest" >&2
python -m pytest -q -p no:cacheprovider "$@"
