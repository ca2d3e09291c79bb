"""Preprocessing of raw frames and clear errors for everything the model cannot accept."""

import numpy as np
import pytest
import torch

from models.classifier import Classifier
from models.config import FusionConfig
from models.errors import EncoderFilesError, ModelInputError
from models.fusion import FusionClassifier
from models.preprocess import preprocess_batch, preprocess_image
from models.text import TextBranch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vit_classifier():
    return Classifier.create(FusionConfig.ablation("vit_only"), ["a", "b"])


def test_frames_in_any_range_become_normalised_224_tensors():
    rng = np.random.default_rng(0)
    for scale, offset in [(1.0, 0.0), (65535.0, 0.0), (1e-9, -3e-9)]:
        frame = rng.random((300, 500)) * scale + offset
        out = preprocess_image(frame)
        assert out.shape == (1, 224, 224) and out.dtype == torch.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
        assert out.max() - out.min() > 1.5  # uses the full range
    assert torch.all(preprocess_image(np.full((50, 50), 7.0)) == 0.0)  # constant -> 0.5 -> 0


def test_grayscale_is_replicated_for_rgb_models_and_rgb_refused_by_grayscale_models():
    gray = np.random.default_rng(0).random((64, 64))
    rgb3 = preprocess_image(gray, channels=3)
    assert rgb3.shape == (3, 224, 224) and torch.equal(rgb3[0], rgb3[2])
    colour = np.random.default_rng(1).random((64, 64, 3))
    assert preprocess_image(colour, channels=3).shape == (3, 224, 224)
    with pytest.raises(ModelInputError, match="grayscale"):
        preprocess_image(colour, channels=1)
    grey_as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert preprocess_image(grey_as_rgb, channels=1).shape == (1, 224, 224)


@pytest.mark.parametrize("frame, message", [
    (np.zeros(10), "rank 1"),
    (np.zeros((2, 3, 4, 5)), "rank 4"),
    (np.zeros((10, 10, 4)), "4 channels"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "non-finite"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), "non-finite"),
    (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
    (np.zeros((1, 10)), "too small"),
])
def test_bad_frames_get_clear_errors(frame, message):
    with pytest.raises(ModelInputError, match=message):
        preprocess_image(frame)


def test_batches_are_stacked_and_empty_batches_refused():
    assert preprocess_batch([np.ones((20, 30)), np.zeros((40, 10))]).shape == (2, 1, 224, 224)
    assert preprocess_batch(np.zeros((3, 16, 16))).shape == (3, 1, 224, 224)
    with pytest.raises(ModelInputError, match="empty"):
        preprocess_batch([])
    with pytest.raises(ModelInputError, match=r"\(N, H, W\)"):
        preprocess_batch(np.zeros((16, 16)))


def test_model_refuses_wrong_tensors():
    model = FusionClassifier(FusionConfig.ablation("vit_only", n_classes=2))
    with pytest.raises(ModelInputError, match="shape"):
        model(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ModelInputError, match="shape"):
        model(torch.zeros(1, 224, 224))
    with pytest.raises(ModelInputError, match="non-finite"):
        model(torch.full((1, 1, 224, 224), float("nan")))
    with pytest.raises(ModelInputError, match="lmm_index"):
        model(torch.zeros(1, 1, 224, 224), torch.tensor([5]))


def test_classifier_refuses_bad_class_lists_labels_and_descriptions(vit_classifier):
    with pytest.raises(ModelInputError, match="empty"):
        Classifier.create(FusionConfig.ablation("vit_only"), [])
    with pytest.raises(ModelInputError, match="duplicate"):
        Classifier.create(FusionConfig.ablation("vit_only"), ["a", "a"])
    with pytest.raises(ModelInputError, match="one per class"):
        Classifier.create(FusionConfig.ablation("full"), ["a", "b"], ["only one"])
    with pytest.raises(ModelInputError, match="description per class"):
        Classifier.create(FusionConfig.ablation("full"), ["a", "b"])
    frames = np.zeros((2, 32, 32))
    with pytest.raises(ModelInputError, match="unknown class label"):
        vit_classifier.classify(frames, ["a", "zebra"])
    with pytest.raises(ModelInputError, match="1 LMM label"):
        vit_classifier.classify(frames, ["a"])
    with pytest.raises(ModelInputError, match="no images"):
        vit_classifier.classify([])


def test_empty_descriptions_and_missing_encoder_files_are_refused(tmp_path):
    with pytest.raises(ModelInputError, match="description 1 is empty"):
        TextBranch(FusionConfig(n_classes=2), ["fine", "  "])
    with pytest.raises(EncoderFilesError, match="does not exist"):
        TextBranch(FusionConfig(n_classes=1, text_encoder=str(tmp_path / "nope")), ["x"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EncoderFilesError, match="tokenizer"):
        TextBranch(FusionConfig(n_classes=1, text_encoder=str(tmp_path)), ["x"])


def test_lists_of_differently_sized_frames_classify_as_each_frame_alone(vit_classifier):
    rng = np.random.default_rng(0)
    frames = [rng.random((100, 80)), rng.random((512, 512)) * 1e4]
    preds = vit_classifier.classify(frames)
    alone = [vit_classifier.classify([frame])[0] for frame in frames]
    assert len(preds) == 2 and preds[0].embedding.shape == (64,)
    for batched, single in zip(preds, alone, strict=True):
        np.testing.assert_allclose(batched.probabilities, single.probabilities, atol=1e-5)
        np.testing.assert_allclose(batched.embedding, single.embedding, atol=1e-4)
        assert batched.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_an_rgb_model_takes_grayscale_and_colour_frames():
    clf = Classifier.create(FusionConfig.ablation("vit_only", in_chans=3), ["a", "b"])
    assert clf.preprocess_batch(np.random.rand(2, 40, 40)).shape == (2, 3, 224, 224)
    preds = clf.classify([np.random.rand(40, 40), np.random.rand(40, 40, 3)])
    assert [len(p.probabilities) for p in preds] == [2, 2]
