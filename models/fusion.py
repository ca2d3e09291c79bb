"""FusionClassifier: one configurable model for CM-EMRL, MultiFusion-LLM, their union and the
papers' ablations and baselines (see models/config.py for the presets).

Data flow (full model):
  images -> pretrained stem -> feature maps at strides 8/16/32 (models/stem.py; absent with
  stem "none", then the branches read pixels)
  features -> hybrid ViT -> h_cls;  features -> HNF -> h_fus
  class descriptions -> text branch -> H_text (C, d)
  h_cls, H_text -> cross-modal alignment -> h_text*;  h_fus, H_text -> relevance -> h_fus^text
  [h_cls, h_fus, h_text*, h_fus^text] -> stage-1 attention -> h_img-text
  [h_img-text, h_ICL] -> stage-2 attention -> h_cross -> linear -> logits (softmax outside)
"w/o MHA" concatenates every embedding above and maps it linearly to the logits.
Baselines (vit_only, gnn_only, fewshot) map their single embedding linearly to the logits;
the few-shot embedding is the stem's pooled features (models/pooled.py).

`last_text_scores` keeps, per image branch ("vit": CM-EMRL alignment, "hnf": relevance
scoring), the (B, C) image-text match scores of the last forward pass: which class description
each image matched, for interpretation.

`features(images)` runs the stem alone; `forward_features(features, lmm_index)` runs the rest
(training on cached frozen-stem features uses it). Weights of a frozen stem are not trainable
and not stored in checkpoints (`frozen_prefixes`); the checkpoint records the stem's identity.

`embed(images)` returns the concatenation of the stage-1 embeddings [h_cls, h_fus, h_text*,
h_fus^text] (the image embedding for baselines): the multimodal embeddings the attention fuses,
independent of any LMM answer. It is the representation used to find similar demonstrations
and the one the out-of-distribution score measures (models/ood.py). Deviation: before the stem,
the full model returned h_img-text here; measured on the bundled checkpoint, the Mahalanobis
score on the 64-d h_img-text (after the attention's LayerNorm) flagged none of 20 blank frames
and 2 of 20 saturated ones at its 0.99 validation quantile, on the 256-d concatenation all
blank and 12 saturated frames, with 1 % of twin frames flagged in both cases.
"""

from __future__ import annotations

import torch
from torch import nn

from models.alignment import CrossModalAlignment, RelevanceScoring
from models.attention import HierarchicalAttention
from models.config import FusionConfig
from models.errors import ModelInputError
from models.gnn import ChebGNNEncoder
from models.hnf import HierarchicalNetworkFusion
from models.lmm import PredictionEmbedding
from models.pooled import PooledStemEncoder
from models.stem import STEM_CHANNELS, STEM_REDUCTIONS, PretrainedStem
from models.text import TextBranch
from models.vit import ViTEncoder


class FusionClassifier(nn.Module):
    """model(images (B, C, 224, 224), lmm_index (B,) long, -1 = none) -> logits (B, n_classes)."""

    def __init__(self, config: FusionConfig, descriptions: list[str] | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d, branches = config.d, config.image_branches
        self.stem = (None if config.stem == "none"
                     else PretrainedStem(train_blocks=config.stem_train_blocks))
        self.vit = ViTEncoder(config) if "vit" in branches else None
        self.hnf = HierarchicalNetworkFusion(config) if "hnf" in branches else None
        self.gnn = ChebGNNEncoder(config) if "gnn" in branches else None
        self.pooled = PooledStemEncoder() if "pooled" in branches else None
        self.text = self.align = self.relevance = None
        if config.text_on:
            if descriptions is None:
                raise ModelInputError("the text branch needs one description per class")
            self.text = TextBranch(config, descriptions)
            if self.vit is not None:
                self.align = CrossModalAlignment(d, config.heads, config.align_temperature)
            if self.hnf is not None:
                self.relevance = RelevanceScoring(d, config.align_temperature)
        self.lmm = PredictionEmbedding(config.n_classes, d) if config.lmm_on else None
        self.last_text_scores: dict[str, torch.Tensor] = {}  # image-text match scores (B, C)
        n_stage1 = len(branches) * (2 if self.text is not None else 1)
        self.attention = None
        if config.baseline is None and config.use_mha:
            self.attention = HierarchicalAttention(n_stage1, self.lmm is not None, d,
                                                   config.heads, config.fusion_norm)
            self.head = nn.Linear(d, config.n_classes)
        else:
            n_all = n_stage1 + (1 if self.lmm is not None else 0)
            width = self.pooled.out_dim if self.pooled is not None else d * n_all
            self.head = nn.Linear(width, config.n_classes)

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse a batch that is not (B, C, S, S) finite floats of this model's size."""
        c, s = self.config.in_chans, self.config.img_size
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ModelInputError("images must be a floating-point torch.Tensor")
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ModelInputError(
                f"images must have shape (B, {c}, {s}, {s}); got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ModelInputError("empty batch")
        if not torch.isfinite(images).all():
            raise ModelInputError("images contain non-finite values (NaN or inf)")

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(C, h, w) of each stem feature map for this model's image size."""
        s = self.config.img_size
        return [(c, s // r, s // r) for c, r in zip(STEM_CHANNELS, STEM_REDUCTIONS, strict=True)]

    def check_features(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Validate precomputed stem features; return them as float32."""
        if self.stem is None:
            raise ModelInputError("this model has no stem: pass images, not stem features")
        shapes = [tuple(f.shape[1:]) for f in features]
        if shapes != self.feature_shapes() or len({f.shape[0] for f in features}) != 1:
            raise ModelInputError(f"stem features must have shapes (B, C, h, w) with (C, h, w) "
                                  f"= {self.feature_shapes()}; got {shapes}")
        return [f.float() for f in features]

    def check_lmm(self, lmm_index: torch.Tensor | None, b: int,
                  device: torch.device) -> torch.Tensor:
        """lmm_index as (B,) long (all -1 when None), range-checked."""
        if lmm_index is None:
            return torch.full((b,), -1, dtype=torch.long, device=device)
        if lmm_index.shape != (b,) or lmm_index.dtype != torch.long:
            raise ModelInputError(f"lmm_index must be a long tensor of shape ({b},)")
        if ((lmm_index < -1) | (lmm_index >= self.config.n_classes)).any():
            raise ModelInputError(f"lmm_index values must lie in [-1, {self.config.n_classes})")
        return lmm_index.to(device)

    def features(self, images: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """What the image branches read: the stem's feature maps (or the images without one)."""
        self.check_images(images)
        return images if self.stem is None else self.stem(images)

    def _stage1(self, inputs: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """Image embeddings followed by their matched text embeddings."""
        image_tokens = [enc(inputs) for enc in (self.vit, self.hnf, self.gnn, self.pooled)
                        if enc is not None]
        if self.text is None:
            return image_tokens
        h_text = self.text()
        matched, self.last_text_scores = [], {}
        if self.vit is not None:
            best, scores = self.align(image_tokens[0], h_text)
            matched.append(best)
            self.last_text_scores["vit"] = scores.detach()
        if self.hnf is not None:
            best, scores = self.relevance(image_tokens[-1], h_text)
            matched.append(best)
            self.last_text_scores["hnf"] = scores.detach()
        return image_tokens + matched

    def encode(self, images: torch.Tensor, lmm_index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_cross, stage-1 concatenation): the pre-logit and the LMM-free embedding."""
        return self._encode(self.features(images), lmm_index, images.shape[0], images.device)

    def encode_features(self, features: list[torch.Tensor],
                        lmm_index: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` from precomputed stem features (`features(images)`)."""
        features = self.check_features(features)
        return self._encode(features, lmm_index, features[0].shape[0], features[0].device)

    def _encode(self, inputs, lmm_index: torch.Tensor | None, b: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        lmm_index = self.check_lmm(lmm_index, b, device)
        stage1 = self._stage1(inputs)
        h_icl = self.lmm(lmm_index) if self.lmm is not None else None
        joint = torch.cat(stage1, dim=-1)
        if self.attention is not None:
            return self.attention(stage1, h_icl)[0], joint
        if h_icl is None:
            return joint, joint
        return torch.cat([joint, h_icl], dim=-1), joint

    def forward(self, images: torch.Tensor, lmm_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encode(images, lmm_index)[0])

    def forward_features(self, features: list[torch.Tensor],
                         lmm_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from precomputed stem features."""
        return self.head(self.encode_features(features, lmm_index)[0])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """LMM-free fused embedding (B, e) for similarity-driven demonstration sampling."""
        return self.encode(images)[1]

    @staticmethod
    def class_prefixes() -> tuple[str, ...]:
        """state_dict prefixes of weights indexed by class (meaningless for another class set):
        the output head and the LMM prediction embedding's one-hot projection."""
        return ("head.", "lmm.project.")

    def frozen_prefixes(self) -> tuple[str, ...]:
        """state_dict prefixes of weights not trained here (not stored in checkpoints): a frozen
        text encoder and the stem's untrained stages ship with their packages."""
        out: tuple[str, ...] = ()
        if self.text is not None and not self.config.text_finetune:
            out += ("text.encoder.",)
        if self.stem is not None:
            out += tuple(f"stem.{p}" for p in self.stem.frozen_prefixes())
        return out

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        frozen = self.frozen_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def count_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
