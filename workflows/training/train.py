"""Training with the papers' protocol (CM-EMRL appendix "Experimental Setup"; MultiFusion-LLM
6.1): Adam, lr 1e-3, batch 48, early stopping on the validation loss, learning rate halved after
5 epochs without improvement (ReduceLROnPlateau); `paper` profile: stratified 10-fold CV for 50
epochs; `quick` profile: one stratified train/val/test split and fewer epochs.

The pretrained stem (models/stem.py; `stem = "none"` trains the papers' raw-pixel form) trains in
one of two modes. `frozen` (quick profile): its features are computed once per image and
augmentation view and cached (workflows/training/feature_cache.py), so an epoch trains only the
fusion
layers. `finetune` (paper profile): the stem's last FINETUNE_BLOCKS stages train too, at
STEM_LR_FACTOR times the learning rate, on images augmented each step.
After calibration the out-of-distribution score (models/ood.py) is fitted: class means and
covariance on the training split's embeddings, threshold on the validation split.

Interruptions: `<out>.partial/` holds the run description (`run.json`: options, dataset
fingerprint, splits, LMM labels) and, per fold, the state after the last finished epoch
(`fold_K.pt`, written atomically), then the fold's finished, calibrated checkpoint. Running the
same command again resumes there (the epoch limit and the time budget may be changed on
resume; every other option must be the same). `time_budget_min` ends training after the first
epoch that finishes past the budget (this session's wall time), then calibrates and saves.
The final checkpoint folder appears only at the end, by a rename of a complete temporary
folder, so a partial checkpoint never looks valid.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from instruments.utils import atomic_file
from models.checkpoint import checkpoint_sha256, load_checkpoint
from models.classifier import Classifier
from models.config import STEMS, FusionConfig
from models.errors import ConfigError, ModelError
from models.fusion import FusionClassifier
from models.preprocess import preprocess_batch
from models.stem import PretrainedStem
from workflows.training.calibrate import save_calibrated
from workflows.training.confounding import few_shot_labels, pca_features, select_confounding
from workflows.training.data import LabelledDataset, load_folder_dataset
from workflows.training.feature_cache import FeatureCache
from workflows.training.knowledge import Knowledge, resolve_knowledge
from workflows.training.splits import Split, holdout_split, kfold_splits
from workflows.training.training_inputs import CachedFeatureInputs, ImageInputs, TrainingInputs

PROFILES: dict[str, dict] = {
    # The papers' protocol (no augmentation).
    "paper": {"folds": 10, "epochs": 50, "early_stop": 10, "lr_patience": 5, "augment": False,
              "grad_clip": None, "stem_mode": "finetune"},
    # One split, frozen stem; sized for 2,000 images at 224 px in <= 10 min on one thread:
    # the stem's features of 4 dihedral views are cached once (~11 ms per image and view),
    # then an epoch trains the fusion layers only (~45 s for 1,428 + 286 images, full model).
    # On pretrained features validation accuracy is ~0.9 after one epoch (5,000-image twin
    # benchmark), so 10 epochs. Views stand in for flips/quarter turns; gradient norm clipped
    # at 1 (at lr 1e-3 the HNF/ODE branch made the loss jump upwards when trained from pixels).
    "quick": {"folds": 1, "epochs": 10, "early_stop": 5, "lr_patience": 3, "augment": True,
              "grad_clip": 1.0, "stem_mode": "frozen"},
}
STEM_MODES = ("frozen", "finetune")
FINETUNE_BLOCKS = 2  # the stem's last two stages (strides 16-32, 1.8 M of 3.4 M weights)
STEM_LR_FACTOR = 0.1
AUGMENT_VIEWS = 4  # cached views per image when a frozen stem trains with augmentation
# options that do not change what a run computes: a resumed run may change them
RESUMABLE_CHANGES = ("epochs", "time_budget_min", "feature_cache")
# what runs recorded before an option existed did (they read raw pixels)
LEGACY_OPTIONS = {"stem": "none"}


class TrainError(RuntimeError):
    """A training run that cannot start or continue (says why and what to do)."""


@dataclass
class TrainOptions:
    profile: str = "quick"
    folds: int | None = None
    epochs: int | None = None
    seed: int = 0
    ablation: str = "full"
    knowledge: str | None = None
    batch_size: int = 48
    lr: float = 1e-3
    lr_factor: float = 0.5
    crop: float | int | None = None
    dedup: bool = True
    time_budget_min: float | None = None
    confounding_fraction: float = 0.1
    shots: int = 5
    demo_strategy: str = "similar"
    augment: bool | None = None  # None: the profile's default
    grad_clip: float | None = None  # max gradient norm; None: the profile's default, 0: off
    init: str | None = None  # checkpoint folder whose weights start the run (fine-tuning)
    stem: str = "efficientnet_lite0"  # or "none": the papers' raw-pixel form
    stem_mode: str | None = None  # frozen | finetune; None: the profile's default
    stem_views: int | None = None  # cached views of a frozen stem; None: 4 with augment, else 1
    feature_cache: str | None = None  # folder of cached stem features (None: default folder)
    config_overrides: dict = field(default_factory=dict)

    def resolved(self) -> dict:
        """Options with the profile's defaults filled in (the record of the run)."""
        if self.profile not in PROFILES:
            raise TrainError(f"unknown profile {self.profile!r}; choose {sorted(PROFILES)}")
        prof = PROFILES[self.profile]
        out = asdict(self)
        out["folds"] = self.folds or prof["folds"]
        out["epochs"] = self.epochs or prof["epochs"]
        out["early_stop"] = prof["early_stop"]
        out["lr_patience"] = prof["lr_patience"]
        out["augment"] = prof["augment"] if self.augment is None else self.augment
        out["grad_clip"] = prof["grad_clip"] if self.grad_clip is None else self.grad_clip or None
        out["stem_mode"] = self.stem_mode or prof["stem_mode"]
        if out["stem_mode"] not in STEM_MODES:
            raise TrainError(f"unknown stem mode {out['stem_mode']!r}; choose {STEM_MODES}")
        if self.stem not in STEMS:
            raise TrainError(f"unknown stem {self.stem!r}; choose {STEMS}")
        out["stem_views"] = self.stem_views or (AUGMENT_VIEWS if out["augment"] else 1)
        return out


def model_config(opts: dict, n_classes: int) -> FusionConfig:
    """The architecture a run trains: the ablation preset, the stem and its mode."""
    overrides = dict(opts["config_overrides"])
    if opts["stem"] == "none":
        overrides["stem"] = "none"
    config = FusionConfig.ablation(opts["ablation"], n_classes=n_classes, **overrides)
    if config.stem != "none" and opts["stem_mode"] == "finetune":
        config = dataclasses.replace(config, stem_train_blocks=FINETUNE_BLOCKS)
    return config


def atomic_torch_save(obj: object, path: Path) -> None:
    with atomic_file.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_json(obj: object, path: Path) -> None:
    atomic_file.write_text(path, json.dumps(obj, indent=1))


def make_splits(ds: LabelledDataset, opts: dict) -> list[Split]:
    if opts["folds"] <= 1:
        return [holdout_split(ds.labels, ds.groups, seed=opts["seed"])]
    return kfold_splits(ds.labels, ds.groups, k=opts["folds"], seed=opts["seed"])


def lmm_labels_per_fold(ds: LabelledDataset, splits: list[Split], opts: dict,
                        config: FusionConfig) -> tuple[list[list[int]], dict]:
    """Few-shot adjudicator labels of the confounding images (-1 elsewhere), one array per
    fold (demonstrations come from that fold's training part only)."""
    if not config.lmm_on or opts["confounding_fraction"] <= 0:
        return [[-1] * len(ds)] * len(splits), {"selected": [], "verdicts": []}
    feats = pca_features(ds.images, seed=opts["seed"])
    sel = select_confounding(ds.images, len(ds.class_names), opts["confounding_fraction"],
                             seed=opts["seed"], features=feats)
    out, verdicts = [], []
    for split in splits:
        labels, v = few_shot_labels(feats, ds.labels, ds.class_names, sel.selected, split.train,
                                    k=opts["shots"], strategy=opts["demo_strategy"],
                                    seed=opts["seed"])
        out.append(labels.tolist())
        verdicts.append(v)
    info = {"selected": sel.selected.tolist(), "adjudicator": "offline-knn",
            "embedding": "PCA of z-scored 224x224 images", "verdicts": verdicts}
    return out, info


def param_groups(model: FusionClassifier, lr: float) -> list[dict]:
    """Adam parameter groups: the fusion layers at `lr`, fine-tuned stem stages lower."""
    stem = {id(p) for p in model.stem.parameters()} if model.stem is not None else set()
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if id(p) not in stem], "lr": lr}]
    stem_params = [p for p in trained if id(p) in stem]
    if stem_params:
        groups.append({"params": stem_params, "lr": lr * STEM_LR_FACTOR})
    return groups


class FoldTrainer:
    """Trains one fold with per-epoch resumable state."""

    def __init__(self, model: FusionClassifier, inputs: TrainingInputs, y: torch.Tensor,
                 lmm: torch.Tensor, split: Split, opts: dict, state_path: Path,
                 console: Console) -> None:
        self.model, self.inputs, self.y, self.lmm = model, inputs, y, lmm
        self.split, self.opts, self.path, self.console = split, opts, state_path, console
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optim = torch.optim.Adam(param_groups(model, opts["lr"]))
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optim, mode="min", factor=opts["lr_factor"], patience=opts["lr_patience"])
        self.epoch, self.best_loss, self.best_state, self.since_best = 0, float("inf"), None, 0
        self.history: list[dict] = []

    def load(self) -> bool:
        """Restore the last saved epoch; False when there is none."""
        if not self.path.exists():
            return False
        st = torch.load(self.path, weights_only=False)
        self.model.load_state_dict(st["model"], strict=False)
        self.optim.load_state_dict(st["optim"])
        self.sched.load_state_dict(st["sched"])
        self.epoch, self.best_loss = st["epoch"], st["best_loss"]
        self.best_state, self.since_best, self.history = (st["best_state"], st["since_best"],
                                                          st["history"])
        return True

    def save(self) -> None:
        atomic_torch_save({"model": self.model.trainable_state_dict(),
                           "optim": self.optim.state_dict(), "sched": self.sched.state_dict(),
                           "epoch": self.epoch, "best_loss": self.best_loss,
                           "best_state": self.best_state, "since_best": self.since_best,
                           "history": self.history}, self.path)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.opts["epochs"] or self.since_best >= self.opts["early_stop"]

    def _batches(self, idx: np.ndarray, shuffle: bool) -> list[np.ndarray]:
        if shuffle:  # seeded by (seed, epoch): a resumed run sees the same order
            rng = np.random.default_rng([self.opts["seed"], self.epoch])
            idx = rng.permutation(idx)
        bs = self.opts["batch_size"]
        return [idx[i:i + bs] for i in range(0, len(idx), bs)]

    def evaluate(self, idx: np.ndarray) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on `idx`."""
        self.model.eval()
        loss, correct = 0.0, 0
        with torch.no_grad():
            for b in self._batches(idx, False):
                logits = self.inputs.logits(self.model, b, self.lmm[b])
                loss += torch.nn.functional.cross_entropy(logits, self.y[b], reduction="sum").item()
                correct += int((logits.argmax(1) == self.y[b]).sum())
        return loss / len(idx), correct / len(idx)

    def run_epoch(self, progress: Progress, task) -> dict:
        self.model.train()
        t0, total, n = time.time(), 0.0, 0
        batches = self._batches(self.split.train, True)
        progress.reset(task, total=len(batches), description=f"epoch {self.epoch + 1}")
        flips = torch.Generator().manual_seed(self.opts["seed"] * 100003 + self.epoch)
        augment = flips if self.opts["augment"] else None
        for b in batches:
            logits = self.inputs.logits(self.model, b, self.lmm[b], augment)
            loss = torch.nn.functional.cross_entropy(logits, self.y[b])
            self.optim.zero_grad()
            loss.backward()
            if self.opts["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.params, self.opts["grad_clip"])
            self.optim.step()
            total += loss.item() * len(b)
            n += len(b)
            progress.advance(task)
        val_loss, val_acc = self.evaluate(self.split.val)
        self.sched.step(val_loss)
        self.epoch += 1
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.since_best = val_loss, 0
            self.best_state = {k: v.clone() for k, v in self.model.trainable_state_dict().items()}
        else:
            self.since_best += 1
        row = {"epoch": self.epoch, "train_loss": total / n, "val_loss": val_loss,
               "val_acc": val_acc, "lr": self.optim.param_groups[0]["lr"],
               "seconds": round(time.time() - t0, 1)}
        self.history.append(row)
        return row


def _load_dataset(data_dir: Path, opts: dict, size: int, console: Console) -> LabelledDataset:
    with Progress(TextColumn("loading images"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("load", total=None)
        return load_folder_dataset(
            data_dir, size=size, crop=opts["crop"], group_duplicates=opts["dedup"],
            progress=lambda i, n: progress.update(task, completed=i, total=n))


def recorded_options(recorded: dict) -> dict:
    """A run's recorded options, with the defaults of options added since it was recorded
    (e.g. `init`), so an older run still compares equal to the same options today; options
    that changed what a run does (the stem) take the value older runs had."""
    return {**TrainOptions().resolved(), **LEGACY_OPTIONS, **recorded}


def _identity(opts: dict) -> dict:
    """The options that define a run (all but the limits on its length)."""
    return {k: v for k, v in opts.items() if k not in RESUMABLE_CHANGES}


def _prepare_run(partial: Path, ds: LabelledDataset, opts: dict, config: FusionConfig,
                 know: Knowledge, console: Console) -> dict:
    """Load `run.json` of an interrupted run with the same data and options, or start one."""
    run_path = partial / "run.json"
    if run_path.exists():
        run = json.loads(run_path.read_text())
        old = recorded_options(run["options"])
        if run["fingerprint"] != ds.fingerprint() or _identity(old) != _identity(opts):
            raise TrainError(
                f"{partial} holds an interrupted run with other data or options; delete that "
                f"folder (or pass --restart) to start over")
        console.print(f"[cyan]resuming the interrupted run in {partial}")
        if any(run["options"][k] != opts[k] for k in RESUMABLE_CHANGES):
            run["options"].update({k: opts[k] for k in RESUMABLE_CHANGES})
            atomic_json(run, run_path)
        return run
    init = _init_record(opts["init"])   # a bad --init fails before any work or folder
    partial.mkdir(parents=True, exist_ok=True)
    splits = make_splits(ds, opts)
    lmm, lmm_info = lmm_labels_per_fold(ds, splits, opts, config)
    run = {"fingerprint": ds.fingerprint(), "options": opts, "config": config.to_dict(),
           "class_names": ds.class_names, "sources": ds.sources, "digests": ds.digests,
           "splits": [s.as_dict() for s in splits], "lmm_labels": lmm, "lmm_info": lmm_info,
           "knowledge": {"path": know.path, "sha256": know.sha256,
                         "provenance": know.provenance},
           "init": init}
    atomic_json(run, run_path)
    return run


def train(data_dir: str | Path, out: str | Path, options: TrainOptions | None = None,
          console: Console | None = None, restart: bool = False,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> Path:
    """Train (or resume), calibrate and save a checkpoint folder at `out`; returns `out`.

    `on_epoch_end(fold, row)` is called after each saved epoch (progress hooks, tests).
    """
    console = console or Console()
    opts = (options or TrainOptions()).resolved()
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if restart and partial.exists():
        shutil.rmtree(partial)
    data_dir = Path(data_dir)
    size = int(opts["config_overrides"].get("img_size", 224))
    ds = _load_dataset(data_dir, opts, size, console)
    know = resolve_knowledge(opts["knowledge"], ds.class_names)
    if know.path == "<class names>":
        console.print("[yellow]no knowledge file covers these classes: the text branch uses "
                      "the class names only (pass --knowledge FILE from `micagent describe`)")
    config = model_config(opts, len(ds.class_names))
    run = _prepare_run(partial, ds, opts, config, know, console)
    try:  # a resumed run keeps the architecture it started with
        config = FusionConfig.from_dict(run["config"])
    except (ConfigError, TypeError) as exc:
        raise TrainError(f"{partial} was started with a model configuration this version "
                         f"cannot build ({exc}); pass --restart to start over") from exc
    descriptions = know.for_classes(ds.class_names)
    x = preprocess_batch(ds.images, channels=config.in_chans, size=config.img_size)
    y = torch.as_tensor(ds.labels)
    inputs = training_inputs(config, x, opts, console)
    started = time.time()
    fold_dirs = []
    for fold, split_d in enumerate(run["splits"]):
        split = Split.from_dict(split_d)
        fold_dir = partial / f"fold_{fold}"
        fold_dirs.append(fold_dir)
        if (fold_dir / "config.json").exists():
            continue
        torch.manual_seed(opts["seed"] * 1000 + fold)
        clf = Classifier.create(config, ds.class_names, descriptions)
        model = clf.model
        lmm = torch.as_tensor(run["lmm_labels"][fold], dtype=torch.long)
        trainer = FoldTrainer(model, inputs, y, lmm, split, opts, partial / f"fold_{fold}.pt",
                              console)
        if trainer.load():
            console.print(f"fold {fold + 1}: resuming after epoch {trainer.epoch}")
        elif opts["init"]:
            summary = init_from_checkpoint(model, opts["init"], ds.class_names)
            console.print(f"fold {fold + 1}: {summary}")
        with Progress(TextColumn(f"fold {fold + 1}/{len(run['splits'])}"),
                      TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("epoch left"), TimeRemainingColumn(),
                      console=console) as progress:
            task = progress.add_task("", total=1)
            while not trainer.finished:
                row = trainer.run_epoch(progress, task)
                trainer.save()
                epochs_left = (opts["epochs"] - trainer.epoch
                               + (len(run["splits"]) - fold - 1) * opts["epochs"])
                progress.console.print(
                    f"fold {fold + 1} epoch {row['epoch']}: train loss {row['train_loss']:.4f}"
                    f"  val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.4f}"
                    f"  lr {row['lr']:.2e}  {row['seconds']:.0f}s"
                    + eta_text(trainer.history, epochs_left, _budget_left(started, opts)))
                if on_epoch_end is not None:
                    on_epoch_end(fold, row)
                if _over_budget(started, opts):
                    break
        if trainer.best_state is not None:
            model.load_state_dict(trainer.best_state, strict=False)
        stop = ("epoch limit" if trainer.epoch >= opts["epochs"] else "early stopping"
                if trainer.finished else "time budget")
        save_calibrated(clf, inputs, y, lmm, split, fold_dir,
                        extra={"fold": fold, "history": trainer.history, "stopped_by": stop,
                               "held_out": held_out(trainer, split)})
    scores = [json.loads((d / "training_fold.json").read_text()).get("held_out")
              for d in fold_dirs]
    line = held_out_line(scores)
    if line:
        console.print(line)
    return _assemble(out, partial, run, fold_dirs, time.time() - started)


def held_out(trainer: FoldTrainer, split: Split) -> dict | None:
    """Top-1 accuracy of the fold's best model on its test split (never seen in training or
    calibration); None for a split without test images."""
    if not len(split.test):
        return None
    loss, top1 = trainer.evaluate(split.test)
    return {"images": int(len(split.test)), "top1": top1, "loss": loss}


def held_out_line(scores: list[dict | None]) -> str:
    """The held-out score said at the end of training: one split's top-1, or the mean and
    spread over the folds ("" where no fold has a test split scored)."""
    known = [s for s in scores if s]
    if not known:
        return ""
    images = sum(s["images"] for s in known)
    if len(known) == 1:
        return f"held-out test split: top-1 {known[0]['top1']:.3f} on {images} images"
    top1 = np.array([s["top1"] for s in known])
    return (f"held-out test folds: top-1 {top1.mean():.3f} ± {top1.std():.3f} over "
            f"{len(known)} folds ({images} images)")


def eta_text(history: list[dict], epochs_left: int, budget_left: float | None) -> str:
    """`  ETA ≤ 4 min 10 s`: the epochs left at most (early stopping may end sooner) at the
    mean epoch time so far, or the time budget left (and one epoch) where that is sooner."""
    if epochs_left <= 0 or not history:
        return ""
    per_epoch = float(np.mean([h["seconds"] for h in history]))
    seconds = epochs_left * per_epoch
    if budget_left is not None:           # the epoch that crosses the budget still ends
        seconds = min(seconds, max(budget_left, 0.0) + per_epoch)
    minutes, rest = divmod(round(seconds), 60)
    return f"  ETA ≤ {minutes} min {rest:02d} s" if minutes else f"  ETA ≤ {rest} s"


def training_inputs(config: FusionConfig, x: torch.Tensor, opts: dict,
                    console: Console) -> TrainingInputs:
    """Cached stem features for a frozen stem, else the images themselves."""
    if config.stem == "none" or config.stem_train_blocks:
        return ImageInputs(x)
    cache = FeatureCache(opts["feature_cache"])
    stem = PretrainedStem()
    views = opts["stem_views"]
    with Progress(TextColumn("stem features {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=len(x) * views)

        def advance(view: int, done: int, total: int) -> None:
            progress.update(task, completed=view * total + done,
                            description=f"view {view + 1}/{views}")

        levels = cache.views(stem, x, views, advance)
        progress.update(task, completed=len(x) * views)
    console.print(f"stem features: {views} view(s) of {len(x)} images, {cache.hits} from the "
                  f"cache and {cache.misses} computed ({cache.folder})")
    if cache.write_error:
        console.print(f"[yellow]stem features not cached ({escape(str(cache.write_error))}); "
                      "pass --feature-cache DIR on a writable disk to reuse them")
    return CachedFeatureInputs(levels)


def _init_record(ckpt: str | None) -> dict | None:
    """Path and hash of the --init checkpoint (provenance of a fine-tuned model)."""
    if not ckpt:
        return None
    try:
        return {"path": str(Path(ckpt).resolve()), "sha256": checkpoint_sha256(ckpt)}
    except (OSError, ModelError) as exc:
        raise TrainError(f"--init {ckpt}: {exc}") from exc


def init_from_checkpoint(model: FusionClassifier, ckpt: str, class_names: list[str]) -> str:
    """Copy into `model` every weight tensor of checkpoint `ckpt` whose name and shape match (a
    fine-tuning start; with another class set the per-class tensors stay new); returns a
    one-line summary. Raises TrainError when the checkpoint is unreadable or nothing fits."""
    try:
        source, meta = load_checkpoint(ckpt)
    except ModelError as exc:
        raise TrainError(f"--init {ckpt}: {exc}") from exc
    theirs = source.trainable_state_dict()
    if meta["class_names"] != class_names:
        theirs = {k: v for k, v in theirs.items() if not k.startswith(source.class_prefixes())}
    ours = model.trainable_state_dict()
    fits = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    if not fits:
        raise TrainError(f"--init {ckpt}: none of its weights fit this model (another "
                         f"ablation or architecture?)")
    model.load_state_dict(fits, strict=False)
    new = sorted(set(ours) - set(fits))
    return (f"initialised {len(fits)} of {len(ours)} weight tensors from {ckpt}"
            + (f"; new: {', '.join(new[:4])}{' ...' if len(new) > 4 else ''}" if new else ""))


def _budget_left(started: float, opts: dict) -> float | None:
    """Seconds of this session's time budget left (None: no budget)."""
    budget = opts.get("time_budget_min")
    return None if budget is None else 60 * budget - (time.time() - started)


def _over_budget(started: float, opts: dict) -> bool:
    """True once this session has trained for longer than the time budget (if any)."""
    left = _budget_left(started, opts)
    return left is not None and left < 0


def _assemble(out: Path, partial: Path, run: dict, fold_dirs: list[Path],
              seconds: float) -> Path:
    """Build the final folder next to `out`, then rename it into place."""
    best = 0
    if len(fold_dirs) > 1:
        losses = [json.loads((d / "training_fold.json").read_text())["best_val_loss"]
                  for d in fold_dirs]
        best = int(np.argmin(losses))
    with atomic_file.atomic_path(out) as tmp:
        _final_folder(tmp, run, fold_dirs, best, seconds)
    shutil.rmtree(partial)
    return out


def _final_folder(tmp: Path, run: dict, fold_dirs: list[Path], best: int,
                  seconds: float) -> None:
    shutil.copytree(fold_dirs[best], tmp)
    if len(fold_dirs) > 1:
        for k, d in enumerate(fold_dirs):
            shutil.copytree(d, tmp / "folds" / f"fold_{k}")
    record = {key: run[key] for key in ("fingerprint", "options", "config", "class_names",
                                        "splits", "knowledge")}
    record["init"] = run.get("init")
    record.update({"digests": run["digests"], "sources": run["sources"],
                   "lmm_labels": run["lmm_labels"],
                   "confounding": {k: v for k, v in run["lmm_info"].items() if k != "verdicts"},
                   "selected_fold": best, "train_seconds_this_session": round(seconds, 1),
                   "torch_threads": torch.get_num_threads()})
    atomic_json(record, tmp / "training.json")
