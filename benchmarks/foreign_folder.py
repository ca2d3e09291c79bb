"""Foreign folder dataset: training and held-out accuracy on textures the twin never draws.

Renders twins/foreign_textures.py's ten procedural families (not SEM morphologies) into WORK:
train/ (60 images per class, seed 0) and test/ (20 per class, seed 1). For each mode it runs
`micagent train train/ --profile quick` (mode quick: from the ImageNet stem; mode init: also
`--init models/bundled/sem_twin`), stem features cached in WORK/cache, then
`micagent evaluate MODEL test/ --json` (another dataset, so every test image is scored).
WORK/cache is emptied first, so the first mode pays for the stem features; a later mode
reuses whatever of them fits it (the printed line says whether its cache was warm).
Printed per mode: wall seconds of the train command (OMP_NUM_THREADS=1, one process), top-1
and macro-F1 on the held-out test images, and the confused class pairs.
Target: <= 600 s of training and top-1 >= 0.95.

    python -m benchmarks.foreign_folder [--work /tmp/micagent_foreign] [--modes quick,init]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from instruments.utils.child_python import module_command
from twins.foreign_textures import CLASSES, write_foreign_dataset

REPO = Path(__file__).resolve().parents[1]

BUNDLED = REPO / "models" / "bundled" / "sem_twin"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1")


def micagent(*args: str) -> str:
    """Run one CLI command (`python -m workflows`), fail loudly, return its stdout."""
    result = subprocess.run(module_command("workflows", *args), cwd=REPO, env=ENV,
                            capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"micagent {' '.join(args)} exited with {result.returncode}")
    return result.stdout


def run_mode(mode: str, work: Path) -> dict:
    model = work / f"{mode}_model"
    shutil.rmtree(model, ignore_errors=True)
    args = ["train", str(work / "train"), "--out", str(model), "--profile", "quick",
            "--feature-cache", str(work / "cache")]
    if mode == "init":
        args += ["--init", str(BUNDLED)]
    cached = sum(1 for p in (work / "cache").rglob("*") if p.is_file())
    t0 = time.perf_counter()
    micagent(*args)
    seconds = time.perf_counter() - t0
    report = json.loads(micagent("evaluate", str(model), str(work / "test"), "--json"))
    return {"train_s": seconds, "report": report, "cache": f"{cached} files" if cached
            else "cold"}


def confusions(report: dict) -> list[str]:
    names, cm = report["class_names"], report["confusion_matrix"]
    return [f"{names[i]} -> {names[j]}: {cm[i][j]}" for i in range(len(names))
            for j in range(len(names)) if i != j and cm[i][j]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/micagent_foreign"))
    parser.add_argument("--per-class-train", type=int, default=60)
    parser.add_argument("--per-class-test", type=int, default=20)
    parser.add_argument("--modes", default="quick,init", help="comma-separated: quick, init")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - {"quick", "init"}:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")

    for folder in ("train", "test", "cache"):  # the first mode computes stem features cold
        shutil.rmtree(args.work / folder, ignore_errors=True)
    t0 = time.perf_counter()
    write_foreign_dataset(args.work / "train", args.per_class_train, seed=0)
    write_foreign_dataset(args.work / "test", args.per_class_test, seed=1)
    print(f"dataset: {len(CLASSES)} classes, {args.per_class_train} train / "
          f"{args.per_class_test} test images per class (224x224), rendered in "
          f"{time.perf_counter() - t0:.1f} s into {args.work}")
    for mode in modes:
        result = run_mode(mode, args.work)
        report = result["report"]
        verdict = "met" if result["train_s"] <= 600 and report["top1"] >= 0.95 else "NOT met"
        print(f"{mode:>5}: train {result['train_s']:.0f} s (one thread, feature cache "
              f"{result['cache']}), "
              f"top-1 {report['top1']:.4f}, macro-F1 {report['macro_f1']:.4f} on "
              f"{report['n_images']} held-out images  (target <= 600 s, >= 0.95: {verdict})")
        for line in confusions(report):
            print(f"       confused {line}")


if __name__ == "__main__":
    main()
