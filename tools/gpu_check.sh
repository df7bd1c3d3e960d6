#!/usr/bin/env bash
# One-command GPU check: the paper's configuration trained on
# random audio in fp32, bf16, bf16 + channels_last (+ torch.compile), with
# projections of a VoxCeleb2 epoch, the schedule and the Vox1-O test, and
# a short epoch of the recipe (loader workers, augmentation) as a ratio of
# the bare step.
#   tools/gpu_check.sh [--steps 200] [--workers N] [--out gpu_check.md] [--cpu]
# At most 8 minutes: the measurements stop at --budget (420 s by default)
# and the whole command is killed at $GPU_CHECK_TIMEOUT s (480; the CPU
# test on a busy machine sets more).
set -euo pipefail
cd "$(dirname "$0")/.."
# dampit's environment when it exists here (env.sh would install it).
venv="${DAMPIT_VENV:-$HOME/.cache/dampit/env-py311}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$venv/bin/python" ]; then
    source tools/env.sh
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "${PYTHON:-python}" tools/gpu_check.py "$@"
