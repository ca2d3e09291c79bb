"""The summary's lines on risk and coverage: coverage, accuracy over decided frames, and the
risk a target promised (from the model's calibration, in the provenance) against the risk
observed where the file holds ground truth (the curve: workflows/report/risk_coverage.py).

Coverage is the share of frames decided (recorded under a class on a decided route:
instruments/session_file/decision_record.DECIDED_ROUTES); risk the share of decided frames
with ground truth whose label is wrong. Accuracy over decided frames and coverage are
reported apart: a session that decides fewer frames may be right more often.
"""

from __future__ import annotations

from typing import Any


def risk_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary table's lines on coverage, accuracy over decided frames and, under a
    target risk, the risk expected from calibration against the risk observed."""
    frames = summary["frames"]
    rows = [("coverage", f"{summary['decided']} of {frames} frames decided"
                         + (f" ({summary['coverage']:.3f})" if frames else ""))]
    observed = None
    if summary.get("scored_decided"):
        observed = 1.0 - summary["accuracy_decided"]
        rows.append(("accuracy (decided frames)",
                     f"{summary['accuracy_decided']:.3f} over {summary['scored_decided']} "
                     "decided frames with truth"))
    control = summary.get("risk_control")
    if control:
        expected = ("no threshold certified: the classifier decides no frame alone"
                    if control.get("threshold") is None else
                    f"<= {control['target']:g} with probability {1 - control['delta']:g} "
                    f"(calibration: {control['errors']} wrong of {control['n']} decided, "
                    f"threshold {control['threshold']:.6f})")
        rows.append(("risk expected", expected))
        rows.append(("risk observed", "no ground truth" if observed is None
                     else f"{observed:.3f} over {summary['scored_decided']} decided frames"))
        rows.append(("escalations", f"used: {', '.join(control['escalations_used']) or 'none'}"
                                    f"; off (no measured gain): "
                                    f"{', '.join(control['escalations_off']) or 'none'}"))
    return rows
