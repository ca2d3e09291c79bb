"""The full fusion model learns: it overfits 20 synthetic images of 4 classes."""

import numpy as np
import torch
import torch.nn.functional as F

from models.classifier import Classifier
from models.config import FusionConfig

torch.set_num_threads(1)
CLASSES = ["horizontal", "vertical", "checker", "dots"]
DESCRIPTIONS = [
    "Parallel horizontal stripes running left to right across the field of view.",
    "Parallel vertical stripes running top to bottom across the field of view.",
    "A checkerboard of alternating bright and dark squares.",
    "Sparse small bright dots scattered on a dark background.",
]


def synthetic_images(per_class: int, size: int = 160, seed: int = 0):
    """Stripes / checkerboard / dots with random period, phase, offset, gain and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for label in range(len(CLASSES)):
        for _ in range(per_class):
            period, phase = rng.uniform(8, 16), rng.uniform(0, 2 * np.pi)
            if label == 0:
                img = np.sin(2 * np.pi * yy / period + phase)
            elif label == 1:
                img = np.sin(2 * np.pi * xx / period + phase)
            elif label == 2:
                img = np.sign(np.sin(2 * np.pi * xx / period + phase)
                              * np.sin(2 * np.pi * yy / period))
            else:
                img = (rng.random((size, size)) > 0.97).astype(float)
            img = rng.uniform(100, 5000) * (img + 0.2 * rng.standard_normal((size, size)))
            images.append(img + rng.uniform(-1000, 1000))
            labels.append(label)
    return np.stack(images).astype(np.float32), np.array(labels)


def test_full_model_overfits_20_images_of_4_classes():
    torch.manual_seed(0)
    clf = Classifier.create(FusionConfig.ablation("full"), CLASSES, DESCRIPTIONS)
    images, labels = synthetic_images(per_class=5)
    batch, target = clf.preprocess_batch(images), torch.from_numpy(labels)
    lmm = clf.lmm_index([None] * 20, 20)
    optimizer = torch.optim.Adam(clf.model.parameters(), lr=1e-3)  # papers: Adam, 1e-3
    accuracy = 0.0
    for _epoch in range(40):
        clf.model.train()
        for idx in torch.randperm(20).split(10):
            loss = F.cross_entropy(clf.logits(batch[idx], lmm[idx]), target[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        predicted = [CLASSES.index(p.label) for p in clf.classify(images)]
        accuracy = float(np.mean(np.array(predicted) == labels))
        if accuracy == 1.0:
            break
    assert accuracy == 1.0
