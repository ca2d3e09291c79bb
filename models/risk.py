"""Risk control for decisions: which confidence threshold keeps the share of wrong labels among
the frames the classifier decides alone at or below a risk the user accepts, and what each
escalation kind gains on the frames it receives. Stored with the model
(`risk_control.json` in the checkpoint folder, written by workflows/training/risk_calibration).

Threshold (Learn then Test: Angelopoulos, Bates, Candès, Jordan and Lei, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", 2021, the selective-classification
example): for each threshold lambda of a grid fixed in advance (GRID, most conservative first),
H0(lambda): "the error rate among frames decided at lambda exceeds alpha" is tested with the
exact binomial p-value P(Binomial(n_lambda, alpha) <= errors_lambda) on the n_lambda
calibration frames decided at lambda; fixed-sequence testing rejects from the top down and
stops at the first p-value above delta, so with probability >= 1 - delta every rejected
lambda, the lowest of them chosen, has risk <= alpha (for frames exchangeable with the
calibration set). A frame is "decided at lambda" by the same rule as the route policy: top
probability >= lambda and a conformal set of at most `max_set_size` classes.

Deviation from the paper, and why: thresholds at which fewer calibration frames are decided
than could ever reject H0 (n < log(delta) / log(1 - alpha), where even zero errors give
p > delta) are skipped instead of tested; testing them would end the fixed sequence at its
start for every dataset. The skip looks only at how many unlabelled scores pass a threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta, binom

from models.checkpoint_sidecar import read_sidecar
from models.errors import ModelInputError

RISK_FILE = "risk_control.json"
DEFAULT_DELTA = 0.1
GRID = tuple(float(v) for v in 1.0 - np.logspace(-6, math.log10(0.9), 481))
"""Candidate thresholds on the top probability, from 1 - 1e-6 down to 0.1."""


@dataclass(frozen=True)
class Certified:
    """The threshold certified for a target risk `alpha` (None: no threshold could be; then the
    classifier decides no frame alone), with the calibration frames it decides (`n`), how many
    of those were wrong, the share of all calibration frames it decides (`coverage`) and the
    (1 - delta) Clopper-Pearson upper bound of its risk."""

    alpha: float
    delta: float
    threshold: float | None
    n: int
    errors: int
    coverage: float
    upper_bound: float | None

    @property
    def empirical_risk(self) -> float | None:
        return self.errors / self.n if self.n else None


@dataclass(frozen=True)
class EscalationGain:
    """What one escalation kind did to the calibration frames it would receive: how many it
    made right that were wrong (`fixed`), made wrong that were right (`broken`), and the
    accuracy on them before and after."""

    n: int
    fixed: int
    broken: int
    accuracy_before: float
    accuracy_after: float

    @property
    def gain(self) -> float:
        return self.accuracy_after - self.accuracy_before

    @property
    def useful(self) -> bool:
        """It measured a gain: it fixed more frames than it broke."""
        return self.fixed > self.broken


@dataclass(frozen=True)
class RiskControl:
    """The calibration of decisions stored with a model: per calibration frame its top
    probability, conformal set size and whether its top class was right; the escalation
    kinds' measured gains; and how the data were made (`source`)."""

    confidence: tuple[float, ...]
    set_size: tuple[int, ...]
    correct: tuple[bool, ...]
    gains: dict[str, EscalationGain] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.confidence) == len(self.set_size) == len(self.correct)) \
                or not self.confidence:
            raise ModelInputError("risk control needs one confidence, set size and "
                                  "correctness per calibration frame, at least one frame")

    def decided(self, threshold: float, max_set_size: int = 1) -> np.ndarray:
        """Which calibration frames the classifier decides alone at `threshold`."""
        return ((np.asarray(self.confidence) >= threshold)
                & (np.asarray(self.set_size) <= max_set_size))

    def certify(self, alpha: float, delta: float = DEFAULT_DELTA,
                max_set_size: int = 1) -> Certified:
        """The lowest threshold of GRID that Learn then Test certifies for risk `alpha`."""
        if not (0.0 < alpha < 1.0 and 0.0 < delta < 1.0):
            raise ModelInputError(f"target risk and delta must lie in (0, 1), got "
                                  f"{alpha} and {delta}")
        wrong = ~np.asarray(self.correct, dtype=bool)
        n_min = math.log(delta) / math.log1p(-alpha)
        chosen: tuple[float, int, int] | None = None
        for threshold in GRID:
            decided = self.decided(threshold, max_set_size)
            n = int(decided.sum())
            if n < n_min:
                continue
            errors = int(wrong[decided].sum())
            if binom.cdf(errors, n, alpha) > delta:
                break
            chosen = (threshold, n, errors)
        if chosen is None:
            return Certified(alpha, delta, None, 0, 0, 0.0, None)
        threshold, n, errors = chosen
        bound = float(beta.ppf(1 - delta, errors + 1, n - errors)) if errors < n else 1.0
        return Certified(alpha, delta, threshold, n, errors, n / len(self.confidence), bound)

    def useful_kinds(self) -> set[str]:
        return {kind for kind, gain in self.gains.items() if gain.useful}

    def measured_kinds(self) -> set[str]:
        return set(self.gains)

    def as_dict(self) -> dict[str, Any]:
        return {"method": "learn_then_test", "frames": [
            [c, s, int(k)] for c, s, k in zip(self.confidence, self.set_size, self.correct,
                                              strict=True)],
            "gains": {kind: asdict(g) for kind, g in self.gains.items()},
            "source": self.source}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RiskControl:
        frames = values["frames"]
        return cls(tuple(float(f[0]) for f in frames), tuple(int(f[1]) for f in frames),
                   tuple(bool(f[2]) for f in frames),
                   {kind: EscalationGain(**g) for kind, g in values.get("gains", {}).items()},
                   dict(values.get("source", {})))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / RISK_FILE
        path.write_text(json.dumps(self.as_dict(), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RiskControl | None:
        """The risk control stored in a checkpoint folder; None when it has none."""
        return read_sidecar(folder, RISK_FILE,
                            lambda path: cls.from_dict(json.loads(path.read_text())),
                            ModelInputError, (ValueError, KeyError, TypeError, IndexError))


def risk_coverage(confidence, correct) -> list[dict[str, float]]:
    """The risk-coverage curve of selective classification: for each distinct confidence,
    taken as the threshold, the share of frames at or above it (coverage) and the share of
    those that are wrong (risk), highest threshold first."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape:
        raise ModelInputError("one correctness per confidence")
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    errors = np.cumsum(~ok)
    points = []
    for i in range(len(conf)):
        if i + 1 < len(conf) and conf[i + 1] == conf[i]:
            continue                          # ties: one point at the last of them
        points.append({"threshold": float(conf[i]), "coverage": (i + 1) / len(conf),
                       "risk": float(errors[i]) / (i + 1)})
    return points
