"""CLI: `micagent train`, `evaluate`, `ablate`, `describe`, `select-confounding`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from instruments.utils import atomic_file
from workflows.terminal import fail, json_text, notice

CROP_HELP = "Crop the SEM info bar off the bottom: pixels (>= 1) or a fraction of the height."
ABLATION_HELP = ("full, no_text, no_lmm, no_mha, no_hnf, no_stem, vit_only, gnn_only, cm_emrl, "
                 "multifusion.")
KNOWLEDGE_HELP = ("Class knowledge JSON (micagent describe); default: the bundled SEM knowledge "
                  "when it covers the classes.")
DEDUP_HELP = "Do not keep near-duplicates on one side of a split."
CONFIG_HELP = "JSON object of FusionConfig overrides."
CONFOUNDING_HELP = ("Share of the images (most ambiguous first) that get few-shot adjudicator "
                    "labels for the LMM embedding; 0 = none.")
AUGMENT_HELP = ("Random flips and quarter turns of training images (default: on for quick, "
                "off for paper).")
CLIP_HELP = "Clip the gradient norm at this value (default: 1 for quick, off for paper; 0 = off)."
INIT_HELP = ("Checkpoint folder whose weights start training (fine-tune or continue a model; "
             "with another class set the per-class weights start new); `bundled`: the bundled "
             "SEM twin model, from any directory.")
BUDGET_HELP = "Minutes: stop after the first epoch that ends past this, then calibrate + save."
STEM_HELP = ("Pretrained image stem under the image branches: efficientnet_lite0 (ImageNet "
             "weights of the installed package) or none (the papers' raw-pixel form).")
STEM_MODE_HELP = ("frozen: stem features cached once per image and view, only the fusion layers "
                  "train (default for quick); finetune: the stem's last stages train too at a "
                  "tenth of the learning rate (default for paper).")
VIEWS_HELP = "Cached augmentation views per image with a frozen stem (default 4, 1 without "\
    "augmentation)."
DESCRIPTIONS_HELP = ("Few-shot profile: JSON object {class name: description}; stored in the "
                     "checkpoint (the few-shot head does not use them).")
BUNDLED = "bundled"             # --init's name for the bundled model
CACHE_HELP = ("Folder of cached stem features (default $MICAGENT_FEATURE_CACHE or "
              "~/.cache/micagent/stem_features).")


def _console() -> Console:
    return Console(stderr=True)


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())


def _options(profile: str, folds: int | None, epochs: int | None, seed: int, ablation: str,
             knowledge: Path | None, crop: str | None, no_dedup: bool, batch_size: int,
             config: str | None, time_budget: float | None = None,
             confounding: float = 0.1, shots: int = 5, strategy: str = "similar",
             augment: bool | None = None, grad_clip: float | None = None,
             init: Path | None = None, stem: str = "efficientnet_lite0",
             stem_mode: str | None = None, stem_views: int | None = None,
             feature_cache: Path | None = None):
    from workflows.training.data import parse_crop
    from workflows.training.train import TrainOptions

    overrides = json.loads(config) if config else {}
    if not isinstance(overrides, dict):
        raise ValueError("--config must be a JSON object of FusionConfig fields")
    return TrainOptions(profile=profile, folds=folds, epochs=epochs, seed=seed,
                        ablation=ablation, knowledge=str(knowledge) if knowledge else None,
                        crop=parse_crop(crop), dedup=not no_dedup, batch_size=batch_size,
                        config_overrides=overrides, time_budget_min=time_budget,
                        confounding_fraction=confounding, shots=shots, demo_strategy=strategy,
                        augment=augment, grad_clip=grad_clip, init=str(init) if init else None,
                        stem=stem, stem_mode=stem_mode, stem_views=stem_views,
                        feature_cache=str(feature_cache) if feature_cache else None)


def train_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Folder with one sub-folder per class (with "
                                             "--profile fewshot also a session file: its "
                                             "frames labelled by a human).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder to write.")],
    profile: Annotated[str, typer.Option(help="quick (one split), paper (10-fold CV) or "
                                              "fewshot (1-20 images per class, seconds).")]
    = "quick",
    folds: Annotated[int | None, typer.Option(help="CV folds (paper profile: 10).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (paper 50, quick 10).")]
    = None,
    seed: Annotated[int, typer.Option()] = 0,
    ablation: Annotated[str, typer.Option(help=ABLATION_HELP)] = "full",
    knowledge: Annotated[Path | None, typer.Option(help=KNOWLEDGE_HELP)] = None,
    crop_bottom: Annotated[str | None, typer.Option("--crop-bottom", help=CROP_HELP)] = None,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help=DEDUP_HELP)] = False,
    batch_size: Annotated[int, typer.Option()] = 48,
    config: Annotated[str | None, typer.Option(help=CONFIG_HELP)] = None,
    restart: Annotated[bool, typer.Option(help="Discard an interrupted run's state.")] = False,
    time_budget: Annotated[float | None, typer.Option(help=BUDGET_HELP)] = None,
    confounding: Annotated[float, typer.Option(help=CONFOUNDING_HELP)] = 0.1,
    shots: Annotated[int, typer.Option(help="Demonstrations per adjudicated image (K).")] = 5,
    demo_strategy: Annotated[str, typer.Option(help="similar or random demonstrations.")]
    = "similar",
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help=AUGMENT_HELP)]
    = None,
    grad_clip: Annotated[float | None, typer.Option(help=CLIP_HELP)] = None,
    init: Annotated[Path | None, typer.Option(help=INIT_HELP)] = None,
    stem: Annotated[str, typer.Option(help=STEM_HELP)] = "efficientnet_lite0",
    stem_mode: Annotated[str | None, typer.Option(help=STEM_MODE_HELP)] = None,
    stem_views: Annotated[int | None, typer.Option(help=VIEWS_HELP)] = None,
    feature_cache: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    descriptions: Annotated[Path | None, typer.Option(help=DESCRIPTIONS_HELP)] = None,
) -> None:
    """Train the fusion classifier with the papers' protocol (resumes an interrupted run), or
    fit the few-shot head on the frozen stem (`--profile fewshot`)."""
    from models.errors import ModelError
    from workflows.training.data import DatasetError
    from workflows.training.knowledge import KnowledgeError
    from workflows.training.splits import SplitError
    from workflows.training.train import TrainError, train

    _threads()
    if profile == "fewshot":
        _fewshot(data_dir, out, seed, descriptions)
        return
    if descriptions is not None:
        raise fail("--descriptions is for --profile fewshot; the fusion model's profiles read "
                   "class descriptions from --knowledge")
    if init is not None and str(init) == BUNDLED:
        from workflows.session_assembly import BUNDLED_MODEL

        init = BUNDLED_MODEL
    try:
        opts = _options(profile, folds, epochs, seed, ablation, knowledge, crop_bottom,
                        no_dedup, batch_size, config, time_budget, confounding, shots,
                        demo_strategy, augment, grad_clip, init, stem, stem_mode,
                        stem_views, feature_cache)
        path = train(data_dir, out, opts, _console(), restart=restart)
    except (DatasetError, SplitError, TrainError, KnowledgeError, ModelError,
            ValueError) as exc:
        raise fail(exc) from exc
    notice(_console(), f"checkpoint written to {path}", "green")


def _fewshot(data_dir: Path, out: Path, seed: int, descriptions: Path | None) -> None:
    """`train --profile fewshot`: fit, then say what could not be calibrated."""
    from models.errors import ModelError
    from workflows.training.data import DatasetError
    from workflows.training.fewshot import train_fewshot

    console = _console()
    try:
        fit = train_fewshot(data_dir, out, seed, descriptions)
    except (DatasetError, ModelError) as exc:
        raise fail(exc) from exc
    for item in fit.not_calibrated:
        notice(console, f"not calibrated: {item}", "yellow")
    if fit.descriptions:
        notice(console, f"descriptions: {fit.descriptions}", "yellow")
    shots = ", ".join(f"{c} {n}" for c, n in fit.shots.items())
    notice(console, f"few-shot checkpoint written to {fit.path} in {fit.seconds:.1f} s "
                    f"(images per class: {shots})", "green")


def evaluate_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    data_dir: Annotated[Path, typer.Argument(help="Folder-per-class dataset.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (indented "
                                                         "on a terminal).")] = False,
    crop_bottom: Annotated[str | None, typer.Option("--crop-bottom", help=CROP_HELP)] = None,
    out: Annotated[Path | None, typer.Option("--out", "--plots", help=(
        "Folder for the plots and evaluation.json/.md; without it nothing is written."))]
    = None,
) -> None:
    """Top-k accuracy, per-class P/R/F1, confusion matrix, calibration and conformal sets:
    printed, and written only into --out."""
    from models.errors import ModelError
    from workflows.training.data import DatasetError, parse_crop
    from workflows.training.evaluate import EvaluateError, evaluate

    _threads()
    try:
        report = evaluate(ckpt, data_dir, crop=parse_crop(crop_bottom))
    except (DatasetError, EvaluateError, ModelError) as exc:
        raise fail(exc) from exc
    if as_json:
        typer.echo(json_text(report))
    else:
        _print_evaluation(ckpt, data_dir, report)
    if out is not None:
        _write_evaluation(report, out)


def _print_evaluation(ckpt: Path, data_dir: Path, report: dict) -> None:
    from workflows.training.evaluate import ood_line

    console = Console()
    table = Table(title=f"{ckpt} on {data_dir} ({report['subset']}, {report['n_images']} images)")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col)
    for name, row in report["per_class"].items():
        table.add_row(name, *(f"{row[m]:.4f}" + (f" ± {row[m + '_std']:.4f}"
                                                 if m + "_std" in row else "")
                              for m in ("precision", "recall", "f1")), str(row["support"]))
    console.print(table)
    for key in ("top1", "top2", "top3", "top5", "macro_precision", "macro_recall", "macro_f1",
                "ece_before_temperature", "ece", "conformal_coverage",
                "conformal_mean_set_size"):
        if key in report:
            std = report.get("std", {}).get(key)
            console.print(f"{key:>24}: {report[key]:.4f}" + (f" ± {std:.4f}" if std else ""))
    if "ood" in report:
        console.print(ood_line(report["ood"]))


def _write_evaluation(report: dict, folder: Path) -> None:
    """The plots and the report files, into `folder` (created), listed on stderr."""
    from workflows.training.evaluate import markdown_report, write_plots

    console = _console()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in write_plots(report, folder):
            notice(console, f"plot: {path}")
        atomic_file.write_text(folder / "evaluation.json", json.dumps(report, indent=1))
        atomic_file.write_text(folder / "evaluation.md", markdown_report(report))
    except OSError as exc:
        raise fail(f"cannot write to {folder}: {exc}") from exc
    notice(console, f"report: {folder / 'evaluation.md'}, {folder / 'evaluation.json'}")


def ablate_cmd(
    data_dir: Annotated[Path, typer.Argument()],
    out: Annotated[Path, typer.Option("--out", help="Checkpoints + table.")]
    = Path("ablation"),
    profile: Annotated[str, typer.Option()] = "quick",
    folds: Annotated[int | None, typer.Option()] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    variants: Annotated[str | None, typer.Option(help="Comma-separated variants.")] = None,
    knowledge: Annotated[Path | None, typer.Option()] = None,
    crop_bottom: Annotated[str | None, typer.Option("--crop-bottom", help=CROP_HELP)] = None,
    batch_size: Annotated[int, typer.Option()] = 48,
    config: Annotated[str | None, typer.Option(help=CONFIG_HELP)] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help=AUGMENT_HELP)]
    = None,
    grad_clip: Annotated[float | None, typer.Option(help=CLIP_HELP)] = None,
    time_budget: Annotated[float | None, typer.Option(help=BUDGET_HELP + " Per variant.")]
    = None,
    stem: Annotated[str, typer.Option(help=STEM_HELP)] = "efficientnet_lite0",
    stem_mode: Annotated[str | None, typer.Option(help=STEM_MODE_HELP)] = None,
    stem_views: Annotated[int | None, typer.Option(help=VIEWS_HELP)] = None,
    feature_cache: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
) -> None:
    """Train and evaluate the full model, the papers' ablations and the baselines."""
    from models.errors import ModelError
    from workflows.training.ablate import ablate
    from workflows.training.data import DatasetError
    from workflows.training.splits import SplitError
    from workflows.training.train import TrainError

    _threads()
    try:
        opts = _options(profile, folds, epochs, seed, "full", knowledge, crop_bottom, False,
                        batch_size, config, time_budget, augment=augment, grad_clip=grad_clip,
                        stem=stem, stem_mode=stem_mode, stem_views=stem_views,
                        feature_cache=feature_cache)
        table = ablate(data_dir, out, opts, variants.split(",") if variants else None,
                       _console())
    except (DatasetError, SplitError, TrainError, ModelError, ValueError) as exc:
        raise fail(exc) from exc
    from workflows.training.ablate import markdown_table

    Console().print(markdown_table(table))


def fit_ood_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint folder (rewritten in place).")],
    data_dir: Annotated[Path, typer.Argument(help="The dataset it was trained on.")],
    quantile: Annotated[float, typer.Option(help="Share of held-out in-distribution images "
                                                 "scored as known (sets the threshold).")
                        ] = 0.99,
    feature_cache: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    method: Annotated[str, typer.Option(help="mahalanobis (fused embedding) or agreed (the "
                                             "Mahalanobis and the stem kNN scores must "
                                             "agree; field-of-view range).")
                      ] = "mahalanobis",
    survey_seeds: Annotated[str, typer.Option(help="agreed: twin seeds whose survey tiles "
                                                   "calibrate the thresholds.")] = "1,2,3,4,5",
    work: Annotated[Path | None, typer.Option(help="agreed: folder caching the model's "
                                                   "passes over the images.")] = None,
) -> None:
    """Fit a checkpoint's out-of-distribution score (on its training split, threshold on
    held-out in-distribution images) without retraining it."""
    from models.errors import ModelError
    from workflows.training.data import DatasetError
    from workflows.training.fit_ood import fit_agreed, fit_ood
    from workflows.training.train import TrainError

    _threads()
    if not 0.5 <= quantile < 1:
        raise fail(f"--quantile must lie in [0.5, 1), got {quantile}")
    if method not in ("mahalanobis", "agreed"):
        raise fail(f"--method must be mahalanobis or agreed, got {method!r}")
    try:
        seeds = [int(s) for s in survey_seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise fail(f"--survey-seeds must be comma-separated integers, got "
                   f"{survey_seeds!r}") from exc
    try:
        if method == "agreed":
            fit = fit_agreed(ckpt, data_dir, seeds, quantile=quantile, cache=work,
                               progress=lambda line: _console().print(line))
        else:
            fit = fit_ood(ckpt, data_dir, quantile,
                          str(feature_cache) if feature_cache else None, _console())
    except (DatasetError, TrainError, ModelError, OSError) as exc:
        raise fail(exc) from exc
    notice(_console(), f"{ckpt}: OOD threshold {fit['threshold']:.4g} ({method}, quantile "
                       f"{fit['quantile']:g} of {fit['val']} validation images"
                       + (f" and {fit['survey']} survey tiles" if "survey" in fit else "")
                       + f"; reference: {fit['train']} training images)", "green")


def fit_probe_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint folder (rewritten in place).")],
    data_dir: Annotated[Path, typer.Argument(help="Labelled images, a folder per class (a "
                                                  "twin dataset: whole specimens held out).")],
    seed: Annotated[int, typer.Option(help="Seed of the probe's training and the split.")] = 0,
) -> None:
    """Fit the stem probe (an MLP on the frozen stem's pooled features) on a labelled folder,
    choose its blend with the fusion head on held-out images and recalibrate the checkpoint
    on the blend. Removes the risk control and adjudicator measurement made before it: run
    `python -m workflows.training.risk_calibration CKPT` and `micagent measure-adjudicators`
    again."""
    from models.errors import ModelError
    from workflows.training.data import DatasetError
    from workflows.training.fit_probe import fit_stem_probe
    from workflows.training.train import TrainError

    _threads()
    try:
        fit = fit_stem_probe(ckpt, data_dir, seed,
                             progress=lambda line: _console().print(line))
    except (DatasetError, TrainError, ModelError, OSError) as exc:
        raise fail(exc) from exc
    top1 = fit["top1"]
    notice(_console(), f"{ckpt}: stem probe fitted on {fit['fit_images']} images; "
                       f"{fit['split']} ({fit['held_out_images']} images); blend weight "
                       f"{fit['blend']:g}; held-out top-1 fusion {top1['fusion']:.3f}, probe "
                       f"{top1['probe']:.3f}, blend {top1['blend']:.3f}; temperature "
                       f"{fit['temperature']:.3f}", "green")
    if fit["removed"]:
        notice(_console(), f"removed {', '.join(fit['removed'])} (made before the probe): "
                           "measure them again", "yellow")


def measure_adjudicators_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint folder (the measurement is "
                                              "written beside it).")],
    data_dir: Annotated[Path, typer.Argument(help="The dataset it was trained on.")],
    adjudicator: Annotated[str, typer.Option(help="offline, or openai (also measures the VLM "
                                                  "of MICAGENT_VLM_MODEL).")] = "offline",
    work: Annotated[Path | None, typer.Option(help="Folder caching the model's passes over "
                                                   "the images.")] = None,
) -> None:
    """Measure each adjudicator on the unsure frames of the held-out test split against the
    classifier on the same frames; store the result and the offline adjudicator's training
    reference beside the checkpoint (the policy lets an adjudicator overrule the classifier
    only where it measured better). Rerun after retraining or refitting the OOD score."""
    from agent.adjudication.cache import AnswerCache
    from agent.adjudication.openai_vlm import OpenAIAdjudicator, VlmConfig, VlmConfigError
    from models.errors import ModelError
    from workflows.training.adjudication import measure_adjudicators
    from workflows.training.data import DatasetError
    from workflows.training.train import TrainError

    _threads()
    if adjudicator not in ("offline", "openai"):
        raise fail(f"--adjudicator must be offline or openai, got {adjudicator!r}")
    try:
        vlm = (OpenAIAdjudicator(VlmConfig.from_env(), AnswerCache(ckpt.parent / "vlm-cache"))
               if adjudicator == "openai" else None)
        result = measure_adjudicators(ckpt, data_dir, vlm=vlm, cache=work,
                                      progress=lambda line: _console().print(line))
    except (VlmConfigError, DatasetError, TrainError, ModelError, OSError) as exc:
        raise fail(exc) from exc
    for name, m in result["adjudicators"].items():
        verdict = "trusted" if m["answered"] and m["accuracy"] > m["classifier_accuracy"] \
            else "not trusted"
        notice(_console(), f"{name}: {m['accuracy']:.3f} on the {m['answered']} of "
                           f"{m['frames']} unsure test frames it answered (classifier "
                           f"{m['classifier_accuracy']:.3f} on them): {verdict}",
               "green" if verdict == "trusted" else "yellow")


def describe_cmd(
    out: Annotated[Path, typer.Option("--out", help="Knowledge JSON to write.")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    data: Annotated[Path | None, typer.Option(help="Classes from this dataset.")] = None,
    prompts: Annotated[str, typer.Option(help="nanomaterial, nanomaterial-cmemrl, "
                                "defect, corrosion or material.")] = "nanomaterial",
    model: Annotated[str | None, typer.Option(help="LLM (default $MICAGENT_LLM_MODEL).")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server "
                                 "(default $MICAGENT_LLM_BASE_URL, else OpenAI).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Answer cache (default OUT.cache/).")]
    = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 120.0,
    retries: Annotated[int, typer.Option(help="Retries per request.")] = 2,
) -> None:
    """Class descriptions by zero-shot CoT prompting of an LLM (temperature 0, top-p 1)."""
    from workflows.training.data import DatasetError, class_folders
    from workflows.training.describe import DescribeError, describe, llm_settings
    from workflows.training.prompts import get_prompt_set

    try:
        if bool(classes) == bool(data):
            raise ValueError("pass exactly one of --classes or --data")
        names = ([c.strip() for c in classes.split(",") if c.strip()] if classes
                 else [f.name for f in class_folders(data)])
        if not names:
            raise ValueError("no class names given")
        settings = llm_settings(model, base_url, timeout=timeout, max_retries=retries)
        describe(names, get_prompt_set(prompts), settings, out,
                 cache or out.with_name(out.name + ".cache"), _console())
    except (DescribeError, DatasetError, ValueError) as exc:
        raise fail(exc) from exc
    notice(_console(), f"knowledge written to {out}", "green")


def select_confounding_cmd(
    data_dir: Annotated[Path, typer.Argument()],
    out: Annotated[Path, typer.Option("--out")] = Path("confounding.json"),
    fraction: Annotated[float, typer.Option(help="Share of the dataset to select.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    crop_bottom: Annotated[str | None, typer.Option("--crop-bottom", help=CROP_HELP)] = None,
    shots: Annotated[int, typer.Option(help="Demonstrations per query (K).")] = 5,
    strategy: Annotated[str, typer.Option(help="similar or random demonstrations.")] = "similar",
) -> None:
    """Ambiguous micrographs (PCA + K-Means, CM-EMRL) and their few-shot adjudicator labels."""
    import numpy as np

    from workflows.training.confounding import few_shot_labels, pca_features, select_confounding
    from workflows.training.data import DatasetError, load_folder_dataset, parse_crop

    try:
        ds = load_folder_dataset(data_dir, crop=parse_crop(crop_bottom), group_duplicates=False)
        feats = pca_features(ds.images, seed=seed)
        sel = select_confounding(ds.images, len(ds.class_names), fraction, seed, features=feats)
        lmm, verdicts = few_shot_labels(feats, ds.labels, ds.class_names, sel.selected,
                                        np.arange(len(ds)), k=shots, strategy=strategy,
                                        seed=seed)
    except (DatasetError, ValueError) as exc:
        raise fail(exc) from exc
    names = [ds.class_names[i] for i in ds.labels]
    rows = sel.records(ds.sources, names)
    for row in rows:
        j = lmm[row["index"]]
        row["adjudicator_label"] = ds.class_names[j] if j >= 0 else None
    result = {"data": str(data_dir), "fraction": fraction, "seed": seed,
              "n_images": len(ds), "n_clusters": len(ds.class_names),
              "pca_components": sel.n_components, "adjudicator": "offline-knn",
              "demonstrations": {"k": shots, "strategy": strategy,
                                 "pool": "all other images of the dataset"},
              "selected": rows, "verdicts": verdicts}
    atomic_file.write_text(out, json.dumps(result, indent=1))
    _console().print(f"{len(rows)} confounding images written to {out}")
