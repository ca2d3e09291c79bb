#!/usr/bin/env bash
# Real wall time of the quick profile on 2,000 images of 224 x 224 (target: <= 10 minutes on
# one thread, stem feature caching included, held-out top-1 >= 0.95): renders a twin benchmark
# the bundled model never saw (SEED, default 1; 200 images per class), trains the full model
# with `micagent train --profile quick` (defaults only; the feature cache starts empty in
# WORK/cache) and evaluates it on its held-out test split.
#   benchmarks/quick_profile_time.sh        (from the repository root, venv active)
# Prints the times; the checkpoint and report stay in WORK (default /tmp/micagent_quick).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK="${WORK:-/tmp/micagent_quick}"
SEED="${SEED:-1}"
rm -rf "$WORK" && mkdir -p "$WORK"
export MICAGENT_FEATURE_CACHE="$WORK/cache"
t0=$(date +%s)
micagent twin dataset "$WORK/data" --per-class 200 --size 224 --seed "$SEED"
t1=$(date +%s)
micagent train "$WORK/data" --out "$WORK/model" --profile quick
t2=$(date +%s)
micagent evaluate "$WORK/model" "$WORK/data"
t3=$(date +%s)
echo "render $((t1 - t0)) s, train $((t2 - t1)) s, evaluate $((t3 - t2)) s" \
     "(OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc --all) cores)"
