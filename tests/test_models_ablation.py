"""The FusionClassifier presets: each ablation removes exactly its part and still runs."""

import pytest
import torch

from models.config import ABLATIONS, FusionConfig
from models.errors import ConfigError
from models.fusion import FusionClassifier

torch.set_num_threads(1)
DESCRIPTIONS = ["Horizontal stripes.", "Vertical stripes.", "A checkerboard.", "Sparse dots."]

# preset -> parts that must be present (everything else must be absent)
PARTS = {
    "full": {"vit", "hnf", "text", "align", "relevance", "lmm", "attention"},
    "no_text": {"vit", "hnf", "lmm", "attention"},
    "no_lmm": {"vit", "hnf", "text", "align", "relevance", "attention"},
    "no_mha": {"vit", "hnf", "text", "align", "relevance", "lmm"},
    "no_hnf": {"vit", "text", "align", "lmm", "attention"},
    "no_stem": {"vit", "hnf", "text", "align", "relevance", "lmm", "attention"},
    "cm_emrl": {"vit", "text", "align", "lmm", "attention"},
    "multifusion": {"hnf", "text", "relevance", "attention"},
    "vit_only": {"vit"},
    "gnn_only": {"gnn"},
}
ALL_PARTS = {"vit", "hnf", "gnn", "text", "align", "relevance", "lmm", "attention"}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: FusionClassifier(FusionConfig.ablation(name, n_classes=4), DESCRIPTIONS)
            for name in ABLATIONS}


@pytest.mark.parametrize("name", ABLATIONS)
def test_preset_builds_exactly_its_parts_and_classifies(models, name):
    model = models[name].eval()
    present = {p for p in ALL_PARTS if getattr(model, p) is not None}
    assert present == PARTS[name]
    assert (model.stem is None) == (name == "no_stem")
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 224, 224), torch.tensor([1, -1]))
        embedding = model.embed(torch.randn(2, 1, 224, 224))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    assert embedding.shape[0] == 2 and torch.isfinite(embedding).all()


@pytest.mark.parametrize("name", ["no_text", "no_lmm", "no_mha", "no_hnf"])
def test_each_ablation_has_fewer_parameters_than_the_full_model(models, name):
    assert models[name].count_parameters() < models["full"].count_parameters()


def test_without_mha_the_head_is_one_linear_map_of_the_concatenated_embeddings(models):
    # h_cls, h_fus, h_text*, h_fus^text, h_ICL -> 5 * d inputs
    assert models["no_mha"].head.in_features == 5 * 64
    assert models["full"].head.in_features == 64


def test_frozen_text_encoder_and_stem_are_not_trainable_nor_counted(models):
    model = models["full"]
    encoder_params = sum(p.numel() for p in model.text.encoder.parameters())
    stem_params = sum(p.numel() for p in model.stem.parameters())
    assert encoder_params > 1e7  # MiniLM
    assert 2.5e6 < stem_params < 3.5e6  # EfficientNet-Lite0 up to stride 32
    assert model.count_parameters(trainable_only=False) - model.count_parameters() == \
        encoder_params + stem_params
    assert not any(k.startswith(("stem.", "text.encoder.")) for k in model.trainable_state_dict())


def test_full_model_sends_gradients_to_every_trainable_parameter(models):
    model = models["full"].train()
    model.zero_grad()
    logits = model(torch.randn(2, 1, 224, 224), torch.tensor([3, -1]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    silent = [n for n, p in model.named_parameters()
              if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert silent == []


def test_unknown_preset_and_impossible_configs_are_refused():
    with pytest.raises(ConfigError, match="unknown ablation"):
        FusionConfig.ablation("no_everything")
    with pytest.raises(ConfigError, match="no image branch"):
        FusionConfig(use_vit=False, use_hnf=False)
    with pytest.raises(ConfigError, match="does not tile"):
        FusionConfig(hnf_patch_sizes=(16, 30, 32))


def test_config_round_trips_through_its_dict_form():
    config = FusionConfig.ablation("multifusion", ode_steps=3)
    assert FusionConfig.from_dict(config.to_dict()) == config


def test_a_frame_gets_the_same_logits_alone_or_in_a_batch(models):
    model = models["full"].eval()
    images = torch.randn(3, 1, 224, 224)
    lmm = torch.tensor([-1, 2, -1])
    with torch.no_grad():
        together = model(images, lmm)
        alone = torch.cat([model(images[i:i + 1], lmm[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-4)
