#!/usr/bin/env bash
# The papers' ablation table on the bundled model's twin benchmark: seed 0, PER_CLASS (default
# 500) images per class x 10 classes at 224 x 224, the same split; every variant trained with
# the quick profile for at most EPOCHS epochs / BUDGET minutes and scored on the same held-out
# test images. SEEDS (default "0") repeats the table per seed (seed 0 in WORK/ablation, seed S
# in WORK/ablation_seedS: another split and initialisation) and prints mean ± sd per row
# (benchmarks/ablation_seeds.py). Frozen-stem features are cached once in WORK/cache and
# shared by every variant and seed.
#   benchmarks/ablation_twin.sh     (from the repository root, venv active)
# It shares WORK/ablation with benchmarks/make_bundled_model.sh: the bundled model's run is its
# row of this table (ablate recognises a finished variant by its options) instead of a second
# second training. VARIANTS picks rows; the HNF variants (full, no_text, no_lmm, no_mha,
# no_stem) cost ~100 s per epoch each on one thread, the others ~10-20 s.
# Writes $WORK/ablation/ablation.{md,json}; rerunning resumes unfinished variants.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK="${WORK:-/tmp/micagent_bundled}"
SEED="${SEED:-0}"
PER_CLASS="${PER_CLASS:-500}"
EPOCHS="${EPOCHS:-40}"
BUDGET="${BUDGET:-30}"
VARIANTS="${VARIANTS:-full,no_text,no_lmm,no_mha,no_hnf,no_stem,vit_only,gnn_only}"
SEEDS="${SEEDS:-0}"
mkdir -p "$WORK/ablation"
if [ ! -f "$WORK/data/manifest.json" ]; then
    micagent twin dataset "$WORK/data" --per-class "$PER_CLASS" --size 224 --seed "$SEED"
fi
folders=()
for S in $SEEDS; do
    OUT="$WORK/ablation"
    [ "$S" = "0" ] || OUT="$WORK/ablation_seed$S"
    start=$(date +%s)
    micagent ablate "$WORK/data" --out "$OUT" --profile quick --seed "$S" \
        --epochs "$EPOCHS" --time-budget "$BUDGET" --variants "$VARIANTS" \
        --feature-cache "$WORK/cache"
    echo "ablation seed $S wall time: $(( $(date +%s) - start )) s" \
         "(OMP_NUM_THREADS=$OMP_NUM_THREADS)"
    folders+=("$OUT")
done
python benchmarks/ablation_seeds.py "${folders[@]}" --out "$WORK/ablation_seeds.md"
