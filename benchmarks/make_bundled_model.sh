#!/usr/bin/env bash
# Regenerates the shipped checkpoint models/bundled/sem_twin/, its evaluation report and README:
# twin benchmark (SEED, PER_CLASS images per class x 10 classes, 224 x 224), the ABLATION
# variant (default full: the papers' model on the pretrained stem, frozen, its features cached
# in WORK/cache) trained with the quick profile (seed SEED) for at most EPOCHS epochs / BUDGET
# minutes, evaluated on its held-out test split. The README of the
# committed checkpoint names the values used.
#   benchmarks/make_bundled_model.sh            (from the repository root, venv active)
# SPECIMENS twin specimens (seed SEED, then seeds 1000 apart) share the images, SURVEY_FRACTION of
# them at survey FOVs of 10 um to SURVEY_FOV_MAX um; INIT (a checkpoint folder, e.g. the
# committed one: copy it out first, this script replaces it) starts the weights (a fine-tune).
# WORK (default /tmp/micagent_bundled) keeps the dataset and the runs; the run lives in
# WORK/ablation/ABLATION, where benchmarks/ablation_twin.sh finds it as that row of the table
# (and this script reuses a finished run there: delete it to retrain). Run the script again
# after an interruption and training continues from its last epoch.
# After evaluation the post-training artefacts are made on the run, as for every bundled model:
# the agreed OOD refit (`micagent fit-ood --method agreed`, OOD_QUANTILE of the validation split
# and of survey tiles of twin seeds 1-5), the adjudicator measurement and training reference
# (`micagent measure-adjudicators`: adjudication.json, adjudication_reference.npz) and the risk
# control (workflows/training/risk_calibration.py, RISK_PER_CLASS fresh draws per class:
# risk_control.json), each in this order since each reads what the one before wrote.
# Before them the stem probe (`micagent fit-probe`, models/stem_probe.py) is fitted on a second,
# larger twin dataset (WORK/probe_data: PROBE_PER_CLASS images per class, PROBE_SPECIMENS
# specimens, PROBE_SURVEY_FRACTION of them at survey FOVs up to PROBE_SURVEY_FOV_MAX um; its last
# fifth of specimens held out for the blend weight and the calibration); PROBE_PER_CLASS=0
# skips it.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK="${WORK:-/tmp/micagent_bundled}"
SEED="${SEED:-0}"
PER_CLASS="${PER_CLASS:-500}"
EPOCHS="${EPOCHS:-40}"
BUDGET="${BUDGET:-30}"  # minutes of training in this session
ABLATION="${ABLATION:-full}"
SPECIMENS="${SPECIMENS:-1}"
SURVEY_FRACTION="${SURVEY_FRACTION:-0.25}"
SURVEY_FOV_MAX="${SURVEY_FOV_MAX:-40}"
INIT="${INIT:-}"
OOD_QUANTILE="${OOD_QUANTILE:-0.995}"
RISK_PER_CLASS="${RISK_PER_CLASS:-100}"
PROBE_PER_CLASS="${PROBE_PER_CLASS:-400}"
PROBE_SPECIMENS="${PROBE_SPECIMENS:-10}"
PROBE_SURVEY_FRACTION="${PROBE_SURVEY_FRACTION:-0.75}"
PROBE_SURVEY_FOV_MAX="${PROBE_SURVEY_FOV_MAX:-40}"
RUN="$WORK/ablation/$ABLATION"
DEST="models/bundled/sem_twin"

mkdir -p "$WORK/ablation"
if [ ! -f "$WORK/data/manifest.json" ]; then
    micagent twin dataset "$WORK/data" --per-class "$PER_CLASS" --size 224 --seed "$SEED" \
        --specimens "$SPECIMENS" --survey-fraction "$SURVEY_FRACTION" \
        --survey-fov-max "$SURVEY_FOV_MAX"
fi
if [ -f "$RUN/training.json" ]; then
    echo "reusing the finished run in $RUN"
else
    start=$(date +%s)
    micagent train "$WORK/data" --out "$RUN" --profile quick --seed "$SEED" \
        --ablation "$ABLATION" --epochs "$EPOCHS" --time-budget "$BUDGET" \
        --feature-cache "$WORK/cache" ${INIT:+--init "$INIT"}
    echo "train wall time: $(( $(date +%s) - start )) s (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
fi
if [ "$PROBE_PER_CLASS" -gt 0 ]; then
    if [ ! -f "$WORK/probe_data/manifest.json" ]; then
        micagent twin dataset "$WORK/probe_data" --per-class "$PROBE_PER_CLASS" --size 224 \
            --seed "$SEED" --specimens "$PROBE_SPECIMENS" \
            --survey-fraction "$PROBE_SURVEY_FRACTION" --survey-fov-max "$PROBE_SURVEY_FOV_MAX"
    fi
    micagent fit-probe "$RUN" "$WORK/probe_data" --seed "$SEED"
fi
micagent evaluate "$RUN" "$WORK/data" --out "$RUN"   # table + PNGs + evaluation.{md,json}
micagent fit-ood "$RUN" "$WORK/data" --method agreed --quantile "$OOD_QUANTILE" \
    --survey-seeds 1,2,3,4,5 --work "$WORK/passes"
micagent measure-adjudicators "$RUN" "$WORK/data" --work "$WORK/passes"
python -m workflows.training.risk_calibration "$RUN" --per-class "$RISK_PER_CLASS"

rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
cp "$RUN"/{config.json,model.safetensors,ood.safetensors,training.json,training_fold.json} \
    "$DEST.tmp/"
cp "$RUN"/{evaluation.json,evaluation.md,reliability.png,confusion_matrix.png} "$DEST.tmp/"
cp "$RUN"/{adjudication.json,adjudication_reference.npz,risk_control.json} "$DEST.tmp/"
if [ -f "$RUN/stem_probe.safetensors" ]; then cp "$RUN"/stem_probe.{safetensors,json} "$DEST.tmp/"; fi
python benchmarks/bundled_readme.py "$DEST.tmp" "$WORK/data"   # README.md from the run's files
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "wrote $DEST"
