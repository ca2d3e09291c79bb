"""Few-shot training on the twin's ten classes: fit time, held-out top-1, foreign frames flagged.

Renders into WORK (once; reused on a second run): `pool/`, POOL images per class from the twin
with seed 0 (`micagent twin dataset`), and `eval/`, TEST images per class from the twin with
seed 1 (another specimen: other regions) plus FOREIGN images of each of the ten texture
families of twins/foreign_textures.py (classes the model is never taught). For each k, the
first k images per class of `pool/` are the support set of
`micagent train SUPPORT --out MODEL --profile fewshot` (OMP_NUM_THREADS=1, one process), then
`micagent evaluate MODEL eval/ --json` scores the twin images (top-1 over the ten known
classes) and the foreign ones (fraction flagged unknown by the checkpoint's OOD test).
Printed per k: wall seconds of the train command (start-up and image reading included), the
fit's own seconds (as recorded in the checkpoint), top-1, macro-F1, the share of known-class
images flagged unknown and the share of foreign images flagged; then the load average.
Targets (issue 23): fit <= 60 s on 2 cores; 5 shots: top-1 >= 0.95; foreign flagged >= 0.90.

    python benchmarks/fewshot.py [--work /tmp/micagent_fewshot] [--shots 1,3,5,10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from benchmarks.foreign_folder import micagent  # one CLI command, OMP_NUM_THREADS=1
from twins.foreign_textures import write_foreign_dataset

POOL, TEST, FOREIGN = 10, 10, 3


def prepare(work: Path) -> None:
    """pool/ and eval/ (skipped when present)."""
    if not (work / "pool" / "manifest.json").exists():
        micagent("twin", "dataset", str(work / "pool"), "--per-class", str(POOL), "--seed", "0")
    if not (work / "eval" / "manifest.json").exists():
        shutil.rmtree(work / "eval", ignore_errors=True)
        write_foreign_dataset(work / "eval", FOREIGN, 224, seed=5)
        micagent("twin", "dataset", str(work / "eval"), "--per-class", str(TEST), "--seed", "1")


def support(work: Path, k: int) -> Path:
    """The first k images of every class of pool/."""
    folder = work / f"support_{k}"
    shutil.rmtree(folder, ignore_errors=True)
    for cls in sorted(p for p in (work / "pool").iterdir() if p.is_dir()):
        (folder / cls.name).mkdir(parents=True)
        for image in sorted(cls.glob("*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))[:k]:
            shutil.copy(image, folder / cls.name / image.name)
    return folder


def run_k(work: Path, k: int) -> dict:
    model = work / f"model_{k}"
    shutil.rmtree(model, ignore_errors=True)
    t0 = time.perf_counter()
    micagent("train", str(support(work, k)), "--out", str(model), "--profile", "fewshot")
    wall = time.perf_counter() - t0
    head = json.loads((model / "config.json").read_text())["head"]
    report = json.loads(micagent("evaluate", str(model), str(work / "eval"), "--json"))
    return {"k": k, "train_wall_s": wall, "fit_s": head["fit_seconds"],
            "top1": report["top1"], "macro_f1": report["macro_f1"], "n_known": report["n_images"],
            "known_flagged": report["ood"]["known_flagged"], "foreign": report["ood"]["images"],
            "foreign_flagged": report["ood"]["flagged"],
            "not_calibrated": len(head["not_calibrated"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/micagent_fewshot"))
    parser.add_argument("--shots", default="1,3,5,10")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work)
    rows = [run_k(args.work, int(k)) for k in args.shots.split(",")]
    print("| shots/class | train wall s | fit s | top-1 | macro-F1 | known flagged | "
          "foreign flagged | not calibrated |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['train_wall_s']:.1f} | {r['fit_s']:.1f} | {r['top1']:.3f} | "
              f"{r['macro_f1']:.3f} | {r['known_flagged']:.3f} of {r['n_known']} | "
              f"{r['foreign_flagged']:.3f} of {r['foreign']} | {r['not_calibrated']} |")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
