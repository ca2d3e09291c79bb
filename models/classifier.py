"""Classifier: the facade the agent and the workflows use.

Inference:
    clf = Classifier.load("models/bundled/sem_twin")          # or (path, class_names, descs)
    preds = clf.classify(frames, lmm_labels=None)              # list[Prediction]
    clf.class_names; clf.save(path); clf.embed(frames) -> (N, e) numpy

`frames`: (N, H, W) array, or a list of 2-D (or (H, W, 3)) arrays in any intensity range;
preprocessing (models/preprocess.py) happens inside. `lmm_labels`: per frame the adjudicating
LMM's answer (a class name) or None. Probabilities are temperature-calibrated; the conformal set
uses the stored LAC threshold (models/calibration.py); without calibration the set is the top-1
class and `extra["conformal"] == "uncalibrated"`. `extra["text_match"]` names, per image branch
("vit", "hnf"), the class whose description the image matched best (None without text branch).
With an out-of-distribution fit (models/ood.py; `clf.fit_ood`) each Prediction's `ood` says
whether the frame is unlike every training class. `clf.head`: the checkpoint's record of a
head fitted outside training (the few-shot fit: support set, what could not be calibrated).
`clf.probe`: the checkpoint's stem probe (models/stem_probe.py, `micagent fit-probe`) or None;
where there is one, the class scores are the fusion head's pooled with it
(`clf.decision_scores`) before the temperature and the conformal threshold.

Training API (used by the training workflow):
    clf = Classifier.create(FusionConfig.ablation("full"), class_names, descriptions)
    model = clf.model                                   # torch.nn.Module (FusionClassifier)
    batch = clf.preprocess_batch(frames)                # (N, C, 224, 224) float tensor
    index = clf.lmm_index(lmm_labels, len(frames))      # (N,) long, -1 = no LMM answer
    logits = clf.logits(batch, index)                   # grad-enabled, model in its own mode
    clf.calibrate(val_logits, val_labels, alpha=0.1)    # temperature + conformal threshold
    clf.fit_ood(train_embeds, train_labels, val_embeds)  # Mahalanobis OOD score + threshold
    clf.save("out/ckpt")
Labels are indices into `clf.class_names` (`clf.label_index(names)` converts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.calibration import conformal_threshold, fit_temperature, prediction_set
from models.checkpoint import checkpoint_sha256, load_checkpoint, load_ood, save_checkpoint
from models.config import FusionConfig
from models.errors import ModelInputError
from models.fusion import FusionClassifier
from models.ood import DEFAULT_QUANTILE, MahalanobisOOD, OODScore
from models.pooled import PooledStemEncoder
from models.prediction import Prediction
from models.preprocess import dihedral_views, preprocess_batch
from models.risk import RiskControl
from models.stem_probe import PROBE_FILE, PROBE_RECORD, StemProbe

CONFORMAL_SCORE = "LAC"


def validate_class_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if not names:
        raise ModelInputError("the class list is empty")
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise ModelInputError("class names must be non-empty strings")
    if len(set(names)) != len(names):
        raise ModelInputError(f"duplicate class names in {names}")
    return names


class Classifier:
    """A FusionClassifier with its class names, descriptions and calibration."""

    def __init__(self, model: FusionClassifier, config: FusionConfig, class_names: list[str],
                 descriptions: list[str] | None, temperature: float = 1.0,
                 conformal_qhat: float | None = None, alpha: float | None = None,
                 ood: OODScore | None = None, head: dict | None = None) -> None:
        self.model = model
        self.config = config
        self._class_names = validate_class_names(class_names)
        if len(self._class_names) != config.n_classes:
            raise ModelInputError(f"{len(self._class_names)} class names for a model of "
                                  f"{config.n_classes} classes")
        self.descriptions = list(descriptions) if descriptions is not None else None
        self.temperature = float(temperature)
        self.conformal_qhat = conformal_qhat
        self.alpha = alpha
        self.ood = ood
        self.head = head  # how a head fitted outside training was made (the few-shot fit)
        self.risk: RiskControl | None = None   # decisions' risk control (models/risk.py)
        self.probe: StemProbe | None = None    # second opinion on pooled stem features
        self.checkpoint_sha256: str | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @classmethod
    def create(cls, config: FusionConfig, class_names: Sequence[str],
               descriptions: Sequence[str] | None = None) -> Classifier:
        """A fresh, untrained classifier; config.n_classes is set from the class names."""
        names = validate_class_names(class_names)
        if config.text_on and descriptions is None:
            raise ModelInputError("this configuration uses the text branch: pass one "
                                  "description per class")
        if descriptions is not None and len(descriptions) != len(names):
            raise ModelInputError(f"{len(descriptions)} description(s) for {len(names)} "
                                  "class(es); need one per class")
        config = dataclasses.replace(config, n_classes=len(names))
        descs = list(descriptions) if descriptions is not None else None
        return cls(FusionClassifier(config, descs), config, names, descs)

    @classmethod
    def load(cls, path: str | Path, class_names: Sequence[str] | None = None,
             descriptions: Sequence[str] | None = None) -> Classifier:
        """Load a checkpoint folder; refuses mismatching class names/descriptions."""
        model, meta = load_checkpoint(path, class_names, descriptions)
        conformal = meta.get("conformal") or {}
        clf = cls(model, model.config, meta["class_names"], meta.get("descriptions"),
                  meta["temperature"], conformal.get("qhat"), conformal.get("alpha"),
                  load_ood(Path(path), meta), meta.get("head"))
        clf.risk = RiskControl.load(path)
        clf.probe = StemProbe.load(path, len(clf.class_names))
        clf.checkpoint_sha256 = checkpoint_sha256(path)
        return clf

    def save(self, path: str | Path) -> Path:
        conformal = None
        if self.conformal_qhat is not None:
            conformal = {"score": CONFORMAL_SCORE, "alpha": self.alpha,
                         "qhat": self.conformal_qhat}
        folder = save_checkpoint(path, self.model, self._class_names, self.descriptions,
                                 self.temperature, conformal, self.ood, self.head)
        if self.probe is not None:
            self.probe.save(folder)
        else:
            for name in (PROBE_FILE, PROBE_RECORD):
                (folder / name).unlink(missing_ok=True)
        self.checkpoint_sha256 = checkpoint_sha256(folder)
        return folder

    # ---- training-friendly API ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess_batch(self, images) -> torch.Tensor:
        """Frames in any range -> normalised (N, C, 224, 224) on the model's device."""
        batch = preprocess_batch(images, self.config.in_chans, self.config.img_size)
        return batch.to(self.device)

    def label_index(self, labels: Sequence[str]) -> torch.Tensor:
        """Class names -> (N,) long tensor of indices."""
        lookup = {n: i for i, n in enumerate(self._class_names)}
        unknown = [lab for lab in labels if lab not in lookup]
        if unknown:
            raise ModelInputError(f"unknown class label(s) {sorted(set(map(str, unknown)))}; "
                                  f"known: {self._class_names}")
        return torch.tensor([lookup[lab] for lab in labels], dtype=torch.long,
                            device=self.device)

    def lmm_index(self, lmm_labels: Sequence[str | None] | None, n: int) -> torch.Tensor:
        """Per-frame LMM answers (class name or None) -> (n,) long, -1 = no answer."""
        if lmm_labels is None:
            return torch.full((n,), -1, dtype=torch.long, device=self.device)
        lmm_labels = list(lmm_labels)
        if len(lmm_labels) != n:
            raise ModelInputError(f"{len(lmm_labels)} LMM label(s) for {n} image(s)")
        answered = [lab for lab in lmm_labels if lab is not None]
        index = torch.full((n,), -1, dtype=torch.long, device=self.device)
        if answered:
            where = torch.tensor([i for i, lab in enumerate(lmm_labels) if lab is not None])
            index[where] = self.label_index(answered)
        return index

    def logits(self, batch: torch.Tensor, lmm_index: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Raw (uncalibrated) logits; gradients on, the model keeps its train/eval mode."""
        return self.model(batch, lmm_index)

    def fusion_pass(self, batch: torch.Tensor, lmm_index: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One preprocessed batch through the model, in the mode and grad state the caller
        set: the fusion head's raw logits, the LMM-free fused embedding, and the stem's pooled
        features (None without a stem)."""
        if self.model.stem is None:
            h_cross, h_embed = self.model.encode(batch, lmm_index)
            return self.model.head(h_cross), h_embed, None
        features = self.model.features(batch)
        h_cross, h_embed = self.model.encode_features(features, lmm_index)
        return self.model.head(h_cross), h_embed, PooledStemEncoder.pool(features)

    def decision_scores(self, fusion_logits: torch.Tensor,
                        pooled: torch.Tensor | None) -> torch.Tensor:
        """The scores the temperature and the conformal threshold apply to: the fusion head's
        logits, pooled with the stem probe's opinion where the checkpoint has one
        (models/stem_probe.py)."""
        if self.probe is None:
            return fusion_logits
        if pooled is None:
            raise ModelInputError("this checkpoint's stem probe reads stem features; the model "
                                  "has no stem")
        return self.probe.pool_with(fusion_logits, pooled)

    def calibrate(self, logits, labels, alpha: float = 0.1) -> None:
        """Fit the temperature on even-indexed and the conformal threshold on odd-indexed
        held-out examples (disjoint halves keep the conformal guarantee exact)."""
        logits = np.asarray(torch.as_tensor(logits).detach().cpu(), dtype=np.float64)
        labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if len(labels) < 4:
            raise ModelInputError("calibration needs at least 4 held-out examples")
        self.temperature = fit_temperature(logits[0::2], labels[0::2])
        probs = torch.softmax(torch.from_numpy(logits[1::2]) / self.temperature, -1).numpy()
        self.conformal_qhat = conformal_threshold(probs, labels[1::2], alpha)
        self.alpha = alpha

    def fit_ood(self, train_embeddings, train_labels, val_embeddings,
                quantile: float = DEFAULT_QUANTILE) -> None:
        """Fit the Mahalanobis OOD score on LMM-free training embeddings (`embed`), its
        threshold (this quantile of their scores) on held-out ones."""
        self.ood = MahalanobisOOD.fit(np.asarray(train_embeddings), np.asarray(train_labels),
                                      len(self._class_names), np.asarray(val_embeddings),
                                      quantile)

    # ---- inference ---------------------------------------------------------------------
    def _run(self, images, lmm_labels, batch_size: int):
        frames = list(images) if not isinstance(images, np.ndarray) else images
        n = len(frames)
        if n == 0:
            raise ModelInputError("no images given")
        lmm = self.lmm_index(lmm_labels, n)
        was_training = self.model.training
        self.model.eval()
        logits, embeds, matches, pooled = [], [], [], []
        try:
            with torch.no_grad():  # not inference_mode: the text cache must stay usable
                for start in range(0, n, batch_size):
                    batch = self.preprocess_batch(frames[start:start + batch_size])
                    fused, h_embed, stem_pooled = self.fusion_pass(
                        batch, lmm[start:start + batch_size])
                    if stem_pooled is not None:
                        pooled.append(stem_pooled)
                    logits.append(self.decision_scores(fused, stem_pooled))
                    embeds.append(h_embed)
                    matches.append({k: v.argmax(-1).tolist()
                                    for k, v in self.model.last_text_scores.items()})
        finally:
            self.model.train(was_training)
        text_match = [{k: self._class_names[m[k][i]] for k in m}
                      for m in matches for i in range(len(next(iter(m.values()), [])))]
        stem = torch.cat(pooled).cpu().numpy() if pooled else None
        return torch.cat(logits).cpu(), torch.cat(embeds).cpu(), text_match, stem

    def _ood_records(self, embeds: np.ndarray, pooled: np.ndarray | None,
                     imaging) -> list[dict]:
        """The OOD verdict per frame, on what the fit reads: the LMM-free fused embedding,
        and for the agreed score also the stem's pooled features and how each frame was
        taken ({"fov": m, "detector": name}, None: unknown)."""
        if getattr(self.ood, "space", "fused") != "both":
            return [self.ood.record(s) for s in self.ood.score(embeds)]
        if pooled is None:
            raise ModelInputError("this OOD fit reads stem features; the model has no stem")
        taken = list(imaging) if imaging is not None else [None] * len(embeds)
        if len(taken) != len(embeds):
            raise ModelInputError(f"{len(taken)} imaging record(s) for {len(embeds)} image(s)")
        return [self.ood.record(s, t)
                for s, t in zip(self.ood.score(embeds, pooled), taken, strict=True)]

    def classify(self, images, lmm_labels: Sequence[str | None] | None = None,
                 batch_size: int = 48,
                 imaging: Sequence[dict | None] | None = None,
                 views: int = 1) -> list[Prediction]:
        """Calibrated predictions for frames in any intensity range; `imaging`, per frame
        where known ({"fov": m, "detector": name}), lets the OOD test flag frames of a scale
        or detector the model was never taught.

        `views` > 1: test-time augmentation. Each frame's first `views` dihedral transforms
        (models/preprocess.dihedral_views) are classified and their calibrated probabilities
        averaged (the standard mean aggregation; Shanmugam et al., "Better Aggregation in
        Test-Time Augmentation", ICCV 2021). Micrographs of a texture have no preferred
        orientation, so every view is the same specimen. The embedding, the text match and the
        OOD verdict stay those of the frame as taken. Deviation: the temperature and the
        conformal threshold were fitted on single views; applied to the averaged
        probabilities the conformal set is no longer exactly calibrated (averaging lowers the
        top probability, so sets tend to grow, the conservative side); the agent therefore
        never decides a frame alone on averaged views (agent/policy.py `is_confident`).
        Measured on 600 survey tiles of 20 twin seeds (benchmarks/results/survey_views.md):
        top-1 0.930 -> 0.945, on the 97 frames the policy calls unsure 0.670 -> 0.753."""
        frames = list(images) if not isinstance(images, np.ndarray) else images
        n = len(frames)
        if views != 1:      # the frame as taken first, then its other views
            frames = [view for image in frames for view in dihedral_views(image, views)]
            lmm_labels = None if lmm_labels is None else [
                lab for lab in lmm_labels for _ in range(views)]
        logits, embeds, text_match, pooled = self._run(frames, lmm_labels, batch_size)
        probs = torch.softmax(logits.double() / self.temperature, dim=-1).numpy()
        taken = slice(None, None, views)           # the rows of the frames as taken
        embeds, pooled = embeds[taken], None if pooled is None else pooled[taken]
        text_match = text_match[taken] if text_match else text_match
        lmm_labels = None if lmm_labels is None else list(lmm_labels)[taken]
        ood = None
        if self.ood is not None:  # `embeds` are LMM-free, as fitted
            ood = self._ood_records(embeds.numpy(), pooled, imaging)
        out = []
        for i, views_p in enumerate(probs.reshape(n, views, -1)):
            p = views_p.mean(axis=0)
            out.append(Prediction(
                class_names=self.class_names,
                probabilities=p,
                conformal_set=self._conformal_set(p),
                embedding=embeds[i].numpy().astype(np.float32),
                lmm_label=None if lmm_labels is None else lmm_labels[i],
                extra={"temperature": self.temperature, "alpha": self.alpha,
                       "conformal": ("uncalibrated" if self.conformal_qhat is None
                                     else CONFORMAL_SCORE),
                       "text_match": text_match[i] if text_match else None},
                ood=None if ood is None else ood[i],
                views=views,
                as_taken=self._class_names[int(np.argmax(views_p[0]))] if views > 1 else None,
            ))
        return out

    def pooled(self, prediction: Prediction, earlier: np.ndarray, frames: int) -> Prediction:
        """`prediction` of a rescanned frame pooled with the mean calibrated probabilities
        `earlier` of the `frames` earlier frames of the same field: every frame weighs the same
        (the mean aggregation of `classify(views=...)`, over frames instead of views), the
        conformal set is taken again on the pooled probabilities, and the embedding and OOD
        verdict stay the new frame's. A rescan is another look at the same field, not a
        better one to be trusted alone. Measured on the escalated calibration frames
        (benchmarks/rescan_pooling.py, results/rescan_pooling.md): pooling broke far fewer
        right readings than letting the rescan's reading replace the first."""
        p = (np.asarray(earlier, dtype=np.float64) * frames + prediction.probabilities) \
            / (frames + 1)
        return dataclasses.replace(
            prediction, probabilities=p, conformal_set=self._conformal_set(p),
            frames=frames + 1, as_taken=prediction.as_taken or prediction.label)

    def _conformal_set(self, probabilities: np.ndarray) -> list[str]:
        """The split-conformal set of calibrated `probabilities`: the top class alone where the
        model has no conformal threshold."""
        members = ([int(np.argmax(probabilities))] if self.conformal_qhat is None
                   else prediction_set(probabilities, self.conformal_qhat))
        return [self._class_names[j] for j in members]

    def embed(self, images) -> np.ndarray:
        """LMM-free fused embeddings (N, e) for similarity-driven demonstrations."""
        return self._run(images, None, 48)[1].numpy()
