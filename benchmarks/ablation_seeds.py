"""Mean ± sd of each ablation row over several seeds: reads the ablation.json of each seed's
`micagent ablate` folder and prints (and writes to --out) one Markdown table.

    python benchmarks/ablation_seeds.py WORK/ablation WORK/ablation_seed1 ... [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = (("top1", "Top-1"), ("top5", "Top-5"), ("macro_f1", "Avg-F1"),
           ("ece", "ECE (after T)"), ("epochs_trained", "epochs"),
           ("train_seconds", "train s"))
METRICS = ("top1", "top5", "macro_f1", "ece")


def cell(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render(folders: list[Path]) -> str:
    tables = [json.loads((f / "ablation.json").read_text()) for f in folders]
    seeds = [t["options"]["seed"] for t in tables]
    order = [r["name"] for r in tables[0]["rows"]]
    labels = {r["name"]: r["label"] for t in tables for r in t["rows"]}
    lines = [f"Seeds {seeds}; mean ± sd over the seeds that finished each variant (n).", "",
             "| Variant | n | " + " | ".join(t for _, t in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for name in order:
        rows = [r for t in tables for r in t["rows"] if r["name"] == name]
        cells = [cell([float(r[k]) for r in rows], 4 if k in METRICS else 1)
                 for k, _ in COLUMNS]
        lines.append(f"| {labels[name]} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = render(args.folders)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
