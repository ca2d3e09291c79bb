"""The risk–coverage curve of a session where its frames carry ground truth: the frames the
session gave a class, most confident first; at each coverage (the share of them kept) the
risk is the share of the kept frames whose label is wrong. The agent's own operating point is
the frames it decided on the evidence (confident, rescan, adjudicated, human)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from agent.policy import UNKNOWN
from instruments.session_file.decision_record import DECIDED_ROUTES
from instruments.session_file.decision_row import DecisionRow
from workflows.report.format import percent


@dataclass(frozen=True)
class RiskCoverage:
    """Coverage and risk after each frame, most confident first; the area under the curve;
    and the agent's operating point (coverage, risk), None where it decided no frame."""

    coverage: np.ndarray
    risk: np.ndarray
    area: float
    frames: int
    agent: tuple[float, float] | None


def risk_coverage(rows: list[DecisionRow]) -> RiskCoverage | None:
    """The curve over frames with a class label, a confidence and ground truth; None where
    there are none."""
    scored = [r for r in rows if r.truth and r.label and r.label != UNKNOWN
              and r.confidence is not None]
    if not scored:
        return None
    order = sorted(scored, key=lambda r: -r.confidence)
    wrong = np.array([r.label != r.truth for r in order], dtype=float)
    kept = np.arange(1, len(order) + 1)
    risk = np.cumsum(wrong) / kept
    decided = [r for r in scored if r.route in {route.value for route in DECIDED_ROUTES}]
    agent = ((len(decided) / len(scored),
              sum(r.label != r.truth for r in decided) / len(decided)) if decided else None)
    return RiskCoverage(kept / len(order), risk, float(risk.mean()), len(order), agent)


def figure(curve: RiskCoverage) -> Figure:
    """The curve drawn, with the agent's operating point."""
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    ax.step(curve.coverage, curve.risk, where="post", color="C0",
            label=f"by confidence (area {curve.area:.3f})")
    if curve.agent:
        ax.plot(*curve.agent, "o", color="C3", label="the agent's decisions")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(curve.risk.max()) * 1.15))
    ax.set_xlabel("coverage (share of labelled frames kept)")
    ax.set_ylabel("risk (share of kept frames wrong)")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def summary(curve: RiskCoverage) -> str:
    """One sentence: the risk at full coverage and at the agent's operating point."""
    text = (f"Over {curve.frames} labelled frames with ground truth, "
            f"{percent(float(curve.risk[-1]))} are wrong when all are kept")
    if curve.agent:
        coverage, risk = curve.agent
        text += (f"; the frames the agent decided on the evidence ({percent(coverage)} of them)"
                 f" are {percent(risk)} wrong")
    return text + "."
