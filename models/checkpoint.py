"""Checkpoints: a folder with `model.safetensors` (weights) and `config.json` (everything else).

config.json holds: format version, software versions, the FusionConfig (every architecture switch),
class names, description texts and their sha256, the text encoder id and the sha256 of its files,
the temperature, the conformal alpha/threshold/score, and the weights' sha256. Weights of a frozen
text encoder are not stored (they ship with the encoder package; its hash is checked instead);
likewise the pretrained stem's frozen stages: config.json records its package, version and weight
sha256 ("stem"), and loading refuses a checkpoint whose stem hash differs from the installed one
(fine-tuned stages are stored with the model). The out-of-distribution fit (models/ood.py), when
there is one, is `ood.safetensors` plus its threshold in config.json. A head fitted by another
procedure than training (the few-shot fit) describes it under "head" in config.json: how it was
fitted and what could not be calibrated. Loading needs no network and
refuses, with CheckpointMismatchError, a checkpoint whose class names or descriptions differ from
those the caller passes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import FusionConfig
from models.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    EncoderMismatchError,
    StemMismatchError,
)
from models.fusion import FusionClassifier
from models.hashing import file_sha256
from models.ood import METHOD, OOD_METHODS, OODScore
from models.stem import STEM_SHA256, stem_identity

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OOD_FILE = "ood.safetensors"
PROBE_FILE = "stem_probe.safetensors"   # models/stem_probe.py


def text_hash(class_names: list[str], descriptions: list[str] | None) -> str:
    """sha256 of the class names with their descriptions (order matters)."""
    payload = json.dumps({"class_names": list(class_names),
                          "descriptions": list(descriptions) if descriptions else None},
                         ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def software_versions() -> dict[str, str]:
    out = {}
    for package in ("micagent", "torch", "timm", "torch-geometric", "torchdiffeq",
                    "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def save_checkpoint(path: str | Path, model: FusionClassifier, class_names: list[str],
                    descriptions: list[str] | None, temperature: float = 1.0,
                    conformal: dict | None = None, ood: OODScore | None = None,
                    head: dict | None = None) -> Path:
    """Write the checkpoint folder `path` (created if needed); return it."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": str(FORMAT_VERSION)})
    if ood is not None:
        save_file(ood.tensors(), str(folder / OOD_FILE))
    elif (folder / OOD_FILE).exists():
        (folder / OOD_FILE).unlink()
    text = model.text
    meta = {
        "format_version": FORMAT_VERSION,
        "software": software_versions(),
        "fusion_config": model.config.to_dict(),
        "class_names": list(class_names),
        "descriptions": list(descriptions) if descriptions else None,
        "descriptions_sha256": text_hash(class_names, descriptions),
        "encoder": None if text is None else {
            "id": model.config.text_encoder, "sha256": text.encoder_sha256,
            "weights_in_checkpoint": model.config.text_finetune},
        "stem": None if model.stem is None else {
            **stem_identity(), "trained_blocks": model.config.stem_train_blocks},
        "temperature": float(temperature),
        "conformal": conformal,
        "ood": None if ood is None else {**ood.meta(),
                                         "sha256": file_sha256(folder / OOD_FILE)},
        "weights_sha256": file_sha256(folder / WEIGHTS_FILE),
    }
    if head is not None:
        meta["head"] = head
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return folder


def read_meta(path: str | Path) -> dict:
    """The parsed config.json of a checkpoint folder, checked for completeness."""
    folder = Path(path)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: needs {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable {config_path}: {exc}") from exc
    required = ("format_version", "fusion_config", "class_names", "descriptions_sha256",
                "temperature", "weights_sha256")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"{config_path} lacks {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {meta['format_version']} is not supported "
                              f"(this code reads format {FORMAT_VERSION})")
    return meta


def check_texts(meta: dict, class_names: list[str] | None,
                descriptions: list[str] | None) -> None:
    """Refuse a checkpoint whose class names/descriptions differ from the caller's."""
    stored_names, stored_desc = meta["class_names"], meta.get("descriptions")
    if text_hash(stored_names, stored_desc) != meta["descriptions_sha256"]:
        raise CheckpointError("the checkpoint's class names/descriptions do not match their "
                              "stored hash (the config.json was edited or is corrupt)")
    if class_names is not None and list(class_names) != stored_names:
        raise CheckpointMismatchError(
            f"class names differ: checkpoint has {stored_names}, caller passed "
            f"{list(class_names)}")
    if descriptions is not None and list(descriptions) != (stored_desc or []):
        changed = [stored_names[i] for i, (a, b) in
                   enumerate(zip(descriptions, stored_desc or [], strict=False)) if a != b]
        raise CheckpointMismatchError(
            "class descriptions differ from those the checkpoint was trained with"
            + (f" (classes: {changed})" if changed else " (different number of descriptions)"))


def check_stem(meta: dict, config: FusionConfig, folder: Path) -> None:
    """Refuse a stem checkpoint without a stem record or made on other stem weights."""
    if config.stem == "none":
        return
    stem = meta.get("stem")
    if not stem or "sha256" not in stem:
        raise CheckpointError(f"{folder} uses stem {config.stem!r} but does not record its "
                              "weights (config.json edited or corrupt)")
    if stem["sha256"] != STEM_SHA256:
        raise StemMismatchError(
            f"{folder} was trained on {stem.get('package')} {stem.get('version')} weights "
            f"(sha256 {stem['sha256'][:16]}...), not the installed ones ({STEM_SHA256[:16]}"
            "...); install the package version it names")


def load_ood(folder: Path, meta: dict) -> OODScore | None:
    """The checkpoint's out-of-distribution fit, checked against its hash (None if absent)."""
    record = meta.get("ood")
    if not record:
        return None
    path = folder / OOD_FILE
    if not path.is_file() or file_sha256(path) != record.get("sha256"):
        raise CheckpointError(f"{path} is missing or does not match its recorded sha256")
    method = OOD_METHODS.get(record.get("method", METHOD))
    if method is None:
        raise CheckpointError(f"{folder}: unknown out-of-distribution method "
                              f"{record.get('method')!r}")
    try:
        return method.from_parts(load_file(str(path)), record)
    except (SafetensorError, KeyError, ValueError) as exc:
        raise CheckpointError(f"unreadable {path}: {exc}") from exc


def load_checkpoint(path: str | Path, class_names: list[str] | None = None,
                    descriptions: list[str] | None = None
                    ) -> tuple[FusionClassifier, dict]:
    """(model in eval mode, meta) from a checkpoint folder; no network access."""
    folder = Path(path)
    meta = read_meta(folder)
    check_texts(meta, class_names, descriptions)
    if file_sha256(folder / WEIGHTS_FILE) != meta["weights_sha256"]:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not match its recorded sha256")
    try:
        config = FusionConfig.from_dict(meta["fusion_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"invalid fusion_config in {folder}: {exc}") from exc
    check_stem(meta, config, folder)
    model = FusionClassifier(config, meta.get("descriptions"))
    encoder = meta.get("encoder")
    if model.text is not None and encoder and model.text.encoder_sha256 != encoder["sha256"]:
        raise EncoderMismatchError(
            f"text encoder {encoder['id']!r} at {model.text.encoder_path} is not the one this "
            "checkpoint was trained with (file hash differs); install the same encoder version")
    weights = load_file(str(folder / WEIGHTS_FILE))
    result = model.load_state_dict(weights, strict=False)
    frozen = model.frozen_prefixes()
    missing = [k for k in result.missing_keys if not k.startswith(frozen)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"weights do not fit the configured model: missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    model.eval()
    return model, meta


def checkpoint_sha256(path: str | Path) -> str:
    """One fingerprint of a checkpoint folder (its config.json and weights, and its stem probe
    where it has one; config.json holds the hash of the OOD fit)."""
    folder = Path(path)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(file_sha256(folder / name).encode())
    if (folder / PROBE_FILE).is_file():
        digest.update(file_sha256(folder / PROBE_FILE).encode())
    return digest.hexdigest()

