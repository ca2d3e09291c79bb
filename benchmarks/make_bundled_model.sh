#!/usr/bin/env bash
# Regenerates the shipped checkpoint models/bundled/sem_twin/, its evaluation report and README:
# twin benchmark (SEED, PER_CLASS images per class x 10 classes, 224 x 224), full model trained
# with the quick profile (seed SEED) for at most EPOCHS epochs / BUDGET minutes, evaluated on
# its held-out test split. The README of the committed checkpoint names the values used.
#   benchmarks/make_bundled_model.sh            (from the repository root, venv active)
# WORK (default /tmp/micagent_bundled) keeps the dataset and the resumable training state: run
# the script again after an interruption and training continues from its last epoch.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK="${WORK:-/tmp/micagent_bundled}"
SEED="${SEED:-0}"
PER_CLASS="${PER_CLASS:-150}"
EPOCHS="${EPOCHS:-60}"
BUDGET="${BUDGET:-75}"  # minutes of training in this session
DEST="models/bundled/sem_twin"

mkdir -p "$WORK"
if [ ! -f "$WORK/data/manifest.json" ]; then
    micagent twin dataset "$WORK/data" --per-class "$PER_CLASS" --size 224 --seed "$SEED"
fi
start=$(date +%s)
micagent train "$WORK/data" --out "$WORK/sem_twin" --profile quick --seed "$SEED" \
    --epochs "$EPOCHS" --time-budget "$BUDGET"
echo "train wall time: $(( $(date +%s) - start )) s (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
micagent evaluate "$WORK/sem_twin" "$WORK/data"   # table + PNGs + evaluation.{md,json}

rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
cp "$WORK/sem_twin"/{config.json,model.safetensors,training.json,training_fold.json} "$DEST.tmp/"
cp "$WORK/sem_twin"/{evaluation.json,evaluation.md,reliability.png,confusion_matrix.png} \
    "$DEST.tmp/"
python benchmarks/bundled_readme.py "$DEST.tmp" "$WORK/data"   # README.md from the run's files
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "wrote $DEST"
