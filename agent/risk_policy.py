"""The route policy set by the risk the user accepts (`micagent run --target-risk A`): at most a
share A of the frames the session decides may be wrong.

The model's stored risk control (models/risk.py, `risk_control.json`) gives the confidence
threshold Learn then Test certifies for A: the classifier decides a frame alone at or above
it. Every escalation kind is used only where it measured a gain on the model's calibration
frames (it fixed more than it broke); a kind with no measurement is not used either, since
nothing says it helps (relooks need a stage and are not measured on calibration frames: they
are off under a target risk). What was set, and the calibration's own figures (the expected risk),
go to the session's provenance, where the summary compares them with the risk observed.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from agent.policy import RoutePolicy
from models.risk import RiskControl

ESCALATION_KINDS = ("dwell", "focus", "fov", "adjudication", "relook")
NOTHING_CONFIDENT = 1.01
"""The threshold when none can be certified: no top probability reaches it."""


class RiskPolicyError(ValueError):
    """A target risk the model cannot serve (no stored risk control, target out of range)."""


def risk_policy(policy: RoutePolicy, risk: RiskControl | None, target: float
                ) -> tuple[RoutePolicy, dict[str, Any]]:
    """`policy` set for `target` risk by the model's risk control, and what was set (for the
    provenance: the certified threshold, its calibration figures, the kinds used and not)."""
    if risk is None:
        raise RiskPolicyError("--target-risk needs a model with a stored risk control "
                              "(risk_control.json: python -m "
                              "workflows.training.risk_calibration CHECKPOINT)")
    if not 0.0 < target < 1.0:
        raise RiskPolicyError(f"--target-risk must lie in (0, 1), got {target}")
    certified = risk.certify(target, max_set_size=policy.max_set_size)
    useful = risk.useful_kinds()
    off = tuple(kind for kind in ESCALATION_KINDS if kind not in useful)
    threshold = certified.threshold if certified.threshold is not None else NOTHING_CONFIDENT
    note = {**asdict(certified), "target": target, "empirical_risk": certified.empirical_risk,
            "escalations_used": sorted(useful & set(ESCALATION_KINDS)),
            "escalations_off": list(off),
            "gains": {kind: {**asdict(g), "gain": g.gain} for kind, g in risk.gains.items()},
            "calibration": risk.source}
    return replace(policy, confidence=threshold, escalations_off=off), note
