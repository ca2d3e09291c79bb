"""The papers' ablation study (CM-EMRL Table 3, MultiFusion-LLM 6.2) and baselines under one
protocol: every variant is trained with the same options, splits and seed, then evaluated on the
same held-out images. Each variant's checkpoint lives in OUT/<name>/ (finished variants are not
retrained, interrupted ones resume); the comparison goes to OUT/ablation.json and
OUT/ablation.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console

from instruments.utils import atomic_file
from workflows.training.evaluate import evaluate
from workflows.training.train import TrainOptions, recorded_options, train

VARIANTS: tuple[tuple[str, str], ...] = (
    ("full", "Full model (ViT + HNF + LLM text + LMM + MHA)"),
    ("no_text", "w/o LLMs (no text branch)"),
    ("no_lmm", "w/o LMMs (no prediction embedding)"),
    ("no_mha", "w/o MHA (concatenate + linear)"),
    ("no_hnf", "w/o HNF"),
    ("no_stem", "w/o pretrained stem (raw pixels)"),
    ("vit_only", "ViT baseline"),
    ("gnn_only", "ChebConv GNN baseline"),
)
COLUMNS = (("top1", "Top-1"), ("top2", "Top-2"), ("top3", "Top-3"), ("top5", "Top-5"),
           ("macro_precision", "Avg-Precision"), ("macro_recall", "Avg-Recall"),
           ("macro_f1", "Avg-F1"), ("ece", "ECE (after T)"))


def _finished(folder: Path, opts: dict) -> bool:
    record = folder / "training.json"
    return (folder / "config.json").exists() and record.exists() and \
        recorded_options(json.loads(record.read_text())["options"]) == opts


def ablate(data_dir: str | Path, out: str | Path, options: TrainOptions,
           variants: list[str] | None = None, console: Console | None = None) -> dict:
    """Train and evaluate each variant; write and return the comparison."""
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = variants or [n for n, _ in VARIANTS]
    labels = dict(VARIANTS)
    rows: list[dict] = []
    table: dict = {}
    for name in names:
        opts = dataclasses.replace(options, ablation=name)
        folder = out / name
        if _finished(folder, opts.resolved()):
            console.print(f"[green]{name}: already trained, evaluating")
        else:
            console.rule(f"ablation {name}")
            train(data_dir, folder, opts, console)
        report = evaluate(folder, data_dir, crop=options.crop)
        history = json.loads((folder / "training_fold.json").read_text())["history"]
        rows.append({"name": name, "label": labels.get(name, name),
                     **{k: report.get(k) for k, _ in COLUMNS},
                     "std": report.get("std", {}), "n_images": report["n_images"],
                     "subset": report["subset"], "epochs_trained": len(history),
                     "train_seconds": round(sum(h["seconds"] for h in history), 1)})
        table = _write(out, data_dir, options, rows)  # after every variant: partial results
    return table


def _write(out: Path, data_dir: str | Path, options: TrainOptions, rows: list[dict]) -> dict:
    table = {"data": str(data_dir), "options": dataclasses.asdict(options), "rows": rows}
    atomic_file.write_text(out / "ablation.json", json.dumps(table, indent=1))
    atomic_file.write_text(out / "ablation.md", markdown_table(table))
    return table


def markdown_table(table: dict) -> str:
    """Rows of the comparison like the papers' tables (mean ± std where there are folds)."""
    head = "| Variant | " + " | ".join(t for _, t in COLUMNS) + " | epochs | train s |"
    lines = [f"# Ablation study on `{table['data']}`", "",
             f"Protocol: profile {table['options']['profile']}, seed {table['options']['seed']},"
             f" same splits for every variant; scores on the held-out test images.", "",
             head, "|" + "---|" * (len(COLUMNS) + 3)]
    for row in table["rows"]:
        cells = []
        for key, _ in COLUMNS:
            v, s = row.get(key), row["std"].get(key)
            cells.append("n/a" if v is None else f"{v:.4f}" + (f" ± {s:.4f}" if s else ""))
        lines.append(f"| {row['label']} | " + " | ".join(cells)
                     + f" | {row.get('epochs_trained', '')} | {row.get('train_seconds', '')} |")
    return "\n".join(lines) + "\n"
