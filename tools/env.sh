#!/usr/bin/env bash
# Create (once) and activate dampit's Python environment.
#
# The environment lives outside the clone, in $DAMPIT_VENV (default
# ~/.cache/dampit/env-py311), so that a second call, a fresh clone or CI
# on the same machine reuses it in seconds. It is (re)synchronised with
# requirements-lock.txt only when the lock's checksum changes; torch is
# never reinstalled when it is already at the locked version.
#
# Usage: source tools/env.sh
set -euo pipefail
_dampit_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DAMPIT_VENV="${DAMPIT_VENV:-$HOME/.cache/dampit/env-py311}"
_dampit_py="${DAMPIT_PYTHON:-python3.11}"
command -v "$_dampit_py" >/dev/null 2>&1 || _dampit_py=python3
_lock="$_dampit_root/requirements-lock.txt"
_want="$(cat "$_lock" "$_dampit_root/setup.cfg" | sha256sum | cut -c1-16)"
_stamp="$DAMPIT_VENV/.dampit-lock"
if [ ! -x "$DAMPIT_VENV/bin/python" ]; then
    echo "[dampit] creating environment in $DAMPIT_VENV" >&2
    mkdir -p "$(dirname "$DAMPIT_VENV")"
    "$_dampit_py" -m venv "$DAMPIT_VENV"
fi
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "[dampit] installing the locked packages (first run: ~5 GB," \
        "a few minutes)" >&2
    "$DAMPIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$_lock"
    "$DAMPIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --no-build-isolation -e "$_dampit_root"
    echo "$_want" > "$_stamp"
fi
# The editable install points at the clone it was made from: re-point it
# when this is another clone (CI's fresh clone, say); seconds, no download.
# The check runs from / so that the current folder's dampit/ does not
# answer for the installed one.
if ! (cd / && "$DAMPIT_VENV/bin/python" - "$_dampit_root") <<'PY' 2>/dev/null
import os, sys, dampit
want = os.path.realpath(sys.argv[1])
got = os.path.realpath(os.path.dirname(os.path.dirname(dampit.__file__)))
sys.exit(0 if got == want else 1)
PY
then
    "$DAMPIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --no-build-isolation -e "$_dampit_root"
fi
# Every process started from here (recipe scripts, console scripts, test
# subprocesses) imports this clone's dampit even when another clone
# re-points the shared editable install meanwhile.
export PYTHONPATH="$_dampit_root${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$DAMPIT_VENV/bin:$PATH"
export VIRTUAL_ENV="$DAMPIT_VENV"
export DAMPIT_DATA="${DAMPIT_DATA:-$(cd "$_dampit_root/.." && pwd)/shared/data}"
set +euo pipefail
