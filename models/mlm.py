"""Optional domain customisation of the text encoder by masked language modelling
(MultiFusion-LLM 3.3): before supervised training, the small LM is trained to predict randomly
masked tokens (15 %, BERT's 80/10/10 scheme via transformers' DataCollatorForLanguageModeling)
of the LLM-written class descriptions. The result is saved as a local encoder folder that
FusionConfig(text_encoder=<folder>) then uses.

It applies to encoders whose checkpoint includes an MLM head (e.g. DeBERTa/BERT base
checkpoints). The bundled MiniLM is a sentence-transformers export of the bare BertModel: its
MLM head weights (cls.predictions.*) are absent, so a new head would start from random weights.
`domain_mlm_pretrain` refuses that with MLMHeadMissingError unless `allow_new_head=True`, in
which case the new head is trained together with the encoder (tied to the word embeddings).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from models.errors import MLMHeadMissingError, ModelInputError
from models.text_encoder import resolve_encoder_path


def domain_mlm_pretrain(encoder: str, descriptions: Sequence[str], out_dir: str | Path,
                        epochs: int = 3, lr: float = 5e-5, batch_size: int = 8,
                        max_length: int = 256, mlm_probability: float = 0.15,
                        allow_new_head: bool = False, seed: int = 0) -> Path:
    """MLM-train `encoder` (bundled id or local folder) on `descriptions`; save to `out_dir`."""
    texts = [t for t in descriptions if isinstance(t, str) and t.strip()]
    if not texts:
        raise ModelInputError("domain MLM pre-training needs at least one non-empty description")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    path = resolve_encoder_path(encoder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return _train(path, texts, Path(out_dir), epochs, lr, batch_size, max_length,
                      mlm_probability, allow_new_head, seed)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _train(path: Path, texts: list[str], out: Path, epochs: int, lr: float, batch_size: int,
           max_length: int, mlm_probability: float, allow_new_head: bool, seed: int) -> Path:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model, info = AutoModelForMaskedLM.from_pretrained(
        str(path), local_files_only=True, output_loading_info=True)
    missing_head = sorted(k for k in info["missing_keys"] if "embeddings" not in k)
    if missing_head and not allow_new_head:
        raise MLMHeadMissingError(
            f"encoder {str(path)!r} ships no MLM head (missing {missing_head[:3]}...); MLM "
            "pre-training would start from a random head. Use an encoder checkpoint with an "
            "MLM head, or pass allow_new_head=True to train a new head as well.")
    windows = tokenizer(texts, max_length=max_length, truncation=True,
                        return_overflowing_tokens=True, return_special_tokens_mask=True)
    examples = [{"input_ids": ids, "special_tokens_mask": mask}
                for ids, mask in zip(windows["input_ids"], windows["special_tokens_mask"],
                                     strict=True)]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            batch = collator([examples[i] for i in order[start:start + batch_size]])
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
