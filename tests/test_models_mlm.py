"""Optional domain MLM pre-training of the text encoder (MultiFusion-LLM 3.3)."""

import pytest
import torch

from models.config import BUNDLED_ENCODER, FusionConfig
from models.errors import MLMHeadMissingError, ModelInputError
from models.mlm import domain_mlm_pretrain
from models.text import TextBranch

torch.set_num_threads(1)
TEXTS = ["Nanowires are one-dimensional crystals grown by the vapour-liquid-solid method.",
         "Porous sponges have open, interconnected pores."]


def test_bundled_minilm_has_no_mlm_head_and_is_refused_by_default(tmp_path):
    with pytest.raises(MLMHeadMissingError, match="no MLM head"):
        domain_mlm_pretrain(BUNDLED_ENCODER, TEXTS, tmp_path / "out")
    with pytest.raises(ModelInputError):
        domain_mlm_pretrain(BUNDLED_ENCODER, ["  "], tmp_path / "out")


def test_mlm_with_a_new_head_yields_an_encoder_the_text_branch_loads(tmp_path):
    out = domain_mlm_pretrain(BUNDLED_ENCODER, TEXTS, tmp_path / "mlm", epochs=1,
                              allow_new_head=True)
    branch = TextBranch(FusionConfig(n_classes=2, text_encoder=str(out)), TEXTS)
    assert branch().shape == (2, 64)
    original = TextBranch(FusionConfig(n_classes=2), TEXTS)
    assert branch.encoder_sha256 != original.encoder_sha256
