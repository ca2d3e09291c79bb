"""Text branch: class descriptions -> one text-level embedding per class (CM-EMRL eq. 2-4).

Each class has one description (the LLM's zero-shot CoT answers, joined). The small LM encodes
its tokens into context-aware states h_expl (m x H); a learnable vector u scores each token,
alpha = softmax(u^T h_expl) over the description's tokens, and h_text = sum_j alpha_j h_expl^(j).
A linear layer then maps H (384 for MiniLM) to the model width d = 64 (deviation: the papers
use the LM width directly; the fusion layers need d).

Descriptions longer than `text_max_tokens` are split into consecutive windows, each encoded with
its own [CLS]/[SEP]; the pooling runs over all tokens of all windows, so no text is dropped.

Frozen encoder (`text_finetune=False`, default): token states are computed once per
description set and cached (not saved: they are recomputed from the encoder at load time), so
training and inference cost only the pooling. Fine-tuned encoder: states are recomputed with
gradients in training mode, and cached in eval mode until an encoder weight changes. Under
no_grad (inference) the pooled H_text itself is cached until a pooling/projection weight
changes.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import FusionConfig
from models.errors import ModelInputError
from models.text_encoder import encoder_hash, load_encoder, resolve_encoder_path


class AttentionPooling(nn.Module):
    """Softmax attention pooling of eq. 3-4: (C, m, H) + mask (C, m) -> (C, H)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(hidden) / hidden**0.5)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (states @ self.u).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        return (alpha.unsqueeze(-1) * states).sum(dim=1)


def validate_descriptions(descriptions: list[str], n_classes: int) -> list[str]:
    """Raise ModelInputError unless there is one non-empty description string per class."""
    if not isinstance(descriptions, list | tuple):
        raise ModelInputError("descriptions must be a list of strings, one per class")
    if len(descriptions) != n_classes:
        raise ModelInputError(
            f"{len(descriptions)} description(s) for {n_classes} class(es); need one per class")
    for i, text in enumerate(descriptions):
        if not isinstance(text, str) or not text.strip():
            raise ModelInputError(f"description {i} is empty or not a string")
    return list(descriptions)


class TextBranch(nn.Module):
    """Class descriptions -> text-level embeddings H_text (C, d)."""

    def __init__(self, config: FusionConfig, descriptions: list[str]) -> None:
        super().__init__()
        self.descriptions = validate_descriptions(descriptions, config.n_classes)
        self.encoder_path = resolve_encoder_path(config.text_encoder)
        self.encoder_sha256 = encoder_hash(self.encoder_path)
        self.tokenizer, self.encoder = load_encoder(self.encoder_path)
        self.finetune = config.text_finetune
        self.encoder.requires_grad_(self.finetune)
        self.window = config.text_max_tokens
        hidden = self.encoder.config.hidden_size
        self.pool = AttentionPooling(hidden)
        self.project = nn.Linear(hidden, config.d)
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._pooled: tuple[tuple, torch.Tensor] | None = None  # H_text under no_grad

    def train(self, mode: bool = True) -> TextBranch:
        super().train(mode)
        if not self.finetune:
            self.encoder.eval()  # frozen: no dropout, cached states stay valid
        return self

    def token_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, M, H) token states of all descriptions, padded, and their (C, M) mask."""
        device = self.project.weight.device
        enc = self.tokenizer(self.descriptions, max_length=self.window, truncation=True,
                             return_overflowing_tokens=True, padding=True, return_tensors="pt")
        owner = enc.pop("overflow_to_sample_mapping")
        enc = {k: v.to(device) for k, v in enc.items()}
        states = self.encoder(**enc).last_hidden_state  # (windows, window, H)
        valid = enc["attention_mask"].bool()
        per_desc = [states[owner == c][valid[owner == c]] for c in range(len(self.descriptions))]
        longest = max(s.shape[0] for s in per_desc)
        out = states.new_zeros(len(per_desc), longest, states.shape[-1])
        mask = torch.zeros(len(per_desc), longest, dtype=torch.bool, device=device)
        for i, s in enumerate(per_desc):
            out[i, :s.shape[0]] = s
            mask[i, :s.shape[0]] = True
        return out, mask

    @staticmethod
    def _version(*modules: nn.Module) -> tuple:
        """Changes whenever one of the modules' weights is replaced or modified in place."""
        return tuple((p.data_ptr(), p._version) for m in modules for p in m.parameters())

    def _states(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.finetune and self.training:
            return self.token_states()
        key = self._version(self.encoder) if self.finetune else ()
        key += (self.project.weight.device,)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.token_states())
        return self._cache[1]

    def forward(self) -> torch.Tensor:
        if torch.is_grad_enabled() or (self.finetune and self.training):
            return self.project(self.pool(*self._states()))
        key = self._version(self.pool, self.project)
        if self._pooled is None or self._pooled[0] != key:
            self._pooled = (key, self.project(self.pool(*self._states())))
        return self._pooled[1]
