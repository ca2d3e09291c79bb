#!/usr/bin/env bash
# The papers' ablation table on a twin benchmark: seed 0, PER_CLASS (default 150, the bundled benchmark) images per class
# x 10 classes at 224 x 224; every variant trained with the quick profile (seed 0, EPOCHS
# default 12) on the same split and scored on the same held-out test images.
#   benchmarks/ablation_twin.sh     (from the repository root, venv active)
# Writes $WORK/out/ablation.{md,json}; rerunning resumes unfinished variants.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK="${WORK:-/tmp/micagent_ablate}"
PER_CLASS="${PER_CLASS:-150}"
EPOCHS="${EPOCHS:-12}"
mkdir -p "$WORK"
if [ ! -f "$WORK/data/manifest.json" ]; then
    micagent twin dataset "$WORK/data" --per-class "$PER_CLASS" --size 224 --seed 0
fi
start=$(date +%s)
micagent ablate "$WORK/data" --out "$WORK/out" --profile quick --seed 0 --epochs "$EPOCHS"
echo "ablation wall time: $(( $(date +%s) - start )) s (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
