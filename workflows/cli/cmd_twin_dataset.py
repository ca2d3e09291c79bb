"""`micagent twin dataset`: export a labelled folder-per-class image dataset from the twin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from twins.classes import SEM_CLASSES
from twins.dataset import render_dataset


def twin_dataset(
    out_dir: Annotated[Path, typer.Argument(help="Output folder (one sub-folder per class).")],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Images per class.")],
    size: Annotated[int, typer.Option("--size", min=16, max=4096,
                                      help="Image side in pixels.")] = 224,
    seed: Annotated[int, typer.Option("--seed", help="Twin seed (same seed, same dataset).")
                    ] = 0,
) -> None:
    """Write OUT_DIR/<Class>/<Class>_<i>.png and OUT_DIR/manifest.json from the SEM twin."""
    console = Console()
    total = per_class * len(SEM_CLASSES)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("rendering twin images", total=total)
        manifest = render_dataset(out_dir, per_class, size, seed,
                                  progress=lambda done, _: progress.update(task, completed=done))
    console.print(f"wrote {len(manifest['images'])} images of {len(SEM_CLASSES)} classes "
                  f"({size}x{size}, seed {seed}) to {out_dir}")
