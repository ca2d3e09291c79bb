"""Confidence calibration: temperature scaling and split-conformal prediction sets.

Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on held-out logits by minimising
the negative log-likelihood of softmax(logits / T) (L-BFGS over log T).

Split conformal, LAC score ("least ambiguous set-valued classifier", Sadinle et al. 2019):
score = 1 - p_true on a held-out calibration set of n examples; q_hat = the
ceil((n + 1)(1 - alpha)) / n empirical quantile (method "higher"); the prediction set of a new
frame is {y : 1 - p_y <= q_hat}, which contains the true class with probability >= 1 - alpha
(marginally, for exchangeable data). LAC gives the smallest average sets; when ceil(...) > n the
threshold is 1 (every class). We add the top-1 class to an otherwise empty set, which only
enlarges sets and so keeps the coverage guarantee.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from models.errors import ModelInputError


def _as_tensors(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ModelInputError(
            f"need logits (n, C) and labels (n,) with n >= 1; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}")
    if ((labels < 0) | (labels >= logits.shape[1])).any():
        raise ModelInputError("labels must be class indices in [0, C)")
    if not torch.isfinite(logits).all():
        raise ModelInputError("logits contain non-finite values")
    return logits, labels


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    logits, labels = _as_tensors(logits, labels)
    return float(F.cross_entropy(logits / temperature, labels))


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The temperature T minimising the held-out NLL of softmax(logits / T)."""
    logits, labels = _as_tensors(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        return 1.0
    return min(max(temperature, 1e-2), 1e2)


def conformal_threshold(probabilities, labels, alpha: float) -> float:
    """LAC split-conformal threshold q_hat from calibration probabilities (n, C) and labels."""
    if not 0.0 < alpha < 1.0:
        raise ModelInputError(f"alpha must lie in (0, 1), got {alpha}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    _as_tensors(probabilities, labels)
    n = len(labels)
    scores = 1.0 - probabilities[np.arange(n), labels]
    rank = math.ceil((n + 1) * (1.0 - alpha))
    if rank > n:
        return 1.0
    return float(np.quantile(scores, rank / n, method="higher"))


def prediction_set(probabilities: np.ndarray, qhat: float) -> np.ndarray:
    """Indices of the classes in the conformal set (never empty), highest probability first."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    members = np.flatnonzero(1.0 - probabilities <= qhat + 1e-12)
    top = int(np.argmax(probabilities))
    if top not in members:
        members = np.append(members, top)
    return members[np.argsort(-probabilities[members], kind="stable")]
