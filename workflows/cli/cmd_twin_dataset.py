"""`micagent twin dataset`: export a labelled folder-per-class image dataset from the twin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from twins.classes import SEM_CLASSES
from twins.dataset import DatasetSettings, render_dataset


def twin_dataset(
    out_dir: Annotated[Path, typer.Argument(help="Output folder (one sub-folder per class).")],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Images per class.")],
    size: Annotated[int, typer.Option("--size", min=16, max=4096,
                                      help="Image side in pixels.")] = 224,
    seed: Annotated[int, typer.Option("--seed", help="Twin seed (same seed, same dataset).")
                    ] = 0,
    specimens: Annotated[int, typer.Option(
        "--specimens", min=1, help="Twin specimens the images are drawn from (seed, then "
                                   "seeds 1000 apart): more regions and texture scales.")] = 1,
    survey_fraction: Annotated[float, typer.Option(
        "--survey-fraction", min=0.0, max=1.0,
        help="Share of images at the FOVs a survey scans (10 um to --survey-fov-max).")
    ] = 0.25,
    survey_fov_max: Annotated[float, typer.Option(
        "--survey-fov-max", min=10.0, max=100.0,
        help="Widest survey FOV in um (80 covers a zoom-out of a 20-40 um tile).")] = 40.0,
) -> None:
    """Write OUT_DIR/<Class>/<Class>_<i>.png and OUT_DIR/manifest.json from the SEM twin."""
    console = Console()
    total = per_class * len(SEM_CLASSES)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("rendering twin images", total=total)
        settings = DatasetSettings(survey_fov=(10e-6, survey_fov_max * 1e-6),
                                   survey_fraction=survey_fraction, specimens=specimens)
        manifest = render_dataset(out_dir, per_class, size, seed, settings,
                                  progress=lambda done, _: progress.update(task, completed=done))
    console.print(f"wrote {len(manifest['images'])} images of {len(SEM_CLASSES)} classes "
                  f"({size}x{size}, seed {seed}, {specimens} specimen(s)) to {out_dir}")
