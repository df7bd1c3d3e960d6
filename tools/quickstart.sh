#!/usr/bin/env bash
# dampit's main job, offline, on 2 CPU cores: set up the environment,
# generate the built-in synthetic corpus, train the mini multi-metric recipe
# on it, verify its held-out speakers (EER, minDCF, DET curve), export the
# model, load it with SpeechBrain's SpeakerRecognition.from_hparams and
# check its decisions: a seeded sample of held-out trials, then the
# accuracy over all of them at the stored threshold against 1 - EER.
# Idempotent: a second call reuses the environment, the corpus and the
# finished training run.
#   bash tools/quickstart.sh [extra train.py overrides, e.g. --number_of_epochs=2]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
set -euo pipefail
WORK="${DAMPIT_QUICKSTART_DIR:-results/quickstart}"
CORPUS="$WORK/corpus"
RUN="$WORK/run"
MODEL="$WORK/model"
if [ ! -f "$CORPUS/manifest.csv" ]; then
    echo "[dampit] generating the built-in synthetic corpus in $CORPUS" >&2
    python -m dampit.cli.synth --out "$CORPUS" --speakers 40 \
        --utts-per-speaker 24
fi
python recipes/VoxCeleb/train.py recipes/VoxCeleb/hparams/quickstart.yaml \
    --data_folder="$CORPUS" --output_folder="$RUN" "$@"
python -m dampit.cli.export "$RUN" "$MODEL" --overwrite
python -m dampit.cli.check_pretrained "$MODEL" "$RUN"
