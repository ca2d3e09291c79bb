"""Autofocus, an instrument feature: when and how the session focuses at a new position.

When (`focus_due`): at a new position's first frame, when its sharpness falls below
`ratio` of what its content predicts (the running mean sharpness of good frames of the class
the classifier gives it, `learned`), or every `every` stage moves. Not on a frame without
signal, and never again once a search found that defocus changes nothing (the `focus` kind
in the session's `ineffective` list, as for rescans: agent/rescan_effect).

How (`search`): a bounded Brent search over defocus (scipy.optimize.minimize_scalar,
method "bounded": golden-section steps with parabolic interpolation) within `span` of the
current defocus, maximising the frame's sharpness (agent/quality.sharpness), on a budget of
`frames` frames, the two ends of the range measured first (a frame in focus at the start is
then told from one that defocus does not change). After `EARLY_PROBES` frames whose
sharpness differs by no more than noise (rescan_effect.SCATTER, the scatter of sharpness
between frames of one place, and NOISE_REL of its value) the search stops: defocus has no
effect here (Nion's simulator, where defocus does not change HAADF), and the defocus stays
where it was. Every trial frame goes through the acquirer, hence the safety envelope and its
dose ledger. The sharpest trial wins; on the twin charging dulls later frames at one place a
little, which favours early trials.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scipy.optimize import minimize_scalar

from agent.policy import FINISH, follow_ruling
from agent.quality import no_signal
from agent.rescan_effect import SCATTER
from instruments.session_file.decision_record import AUTOFOCUS, DecisionRecord

EARLY_PROBES = 3
NOISE_REL = 0.1
UM = 1e-6                    # the search runs in micrometres (scipy's tolerances are absolute)
LEARN_RATE = 0.2


@dataclass(frozen=True)
class AutofocusSettings:
    """every: focus every N stage moves (0: only when sharpness falls short); ratio: a frame
    below this share of its content's expected sharpness is refocused; frames: the frame
    budget of one search; span: how far from the current defocus it looks (m); pixels:
    the trial frames' size (at most the frame's)."""

    every: int = 0
    ratio: float = 0.7
    frames: int = 8
    span: float = 5e-6
    pixels: int = 256


@dataclass(frozen=True)
class FocusResult:
    defocus: float                 # the sharpest defocus found; the start when no effect
    probes: list[list[float]]      # [defocus (m), sharpness] per trial frame, in order
    effect: bool                   # whether defocus changed the sharpness beyond noise


class _Stop(Exception):
    """The search's frame budget is spent, or defocus shows no effect."""


def varies(sharpness: list[float]) -> bool:
    """True when the sharpness values differ by more than the scatter between frames of one
    place (SCATTER) and more than NOISE_REL of the sharpest: defocus changed the image."""
    spread = max(sharpness) - min(sharpness)
    return spread > SCATTER["sharpness"] and spread > NOISE_REL * max(sharpness)


def search(measure: Callable[[float], float], start: float,
           bounds: tuple[float, float], settings: AutofocusSettings) -> FocusResult:
    """The sharpest defocus within `settings.span` of `start` (inside `bounds`), measuring
    `measure(defocus)` (one frame each) at most `settings.frames` times."""
    lo, hi = max(bounds[0], start - settings.span), min(bounds[1], start + settings.span)
    probes: list[list[float]] = []

    def cost(x_um: float) -> float:
        if len(probes) >= settings.frames:
            raise _Stop
        defocus = float(x_um) * UM
        probes.append([defocus, measure(defocus)])
        if len(probes) == EARLY_PROBES and not varies([s for _, s in probes]):
            raise _Stop
        return -probes[-1][1]

    if hi > lo:
        try:                     # the ends first: an image in focus at the start is told
            cost(lo / UM)        # from one that defocus does not change
            cost(hi / UM)
            minimize_scalar(cost, bounds=(lo / UM, hi / UM), method="bounded",
                            options={"xatol": 1e-3, "maxiter": settings.frames})
        except _Stop:
            pass
    effect = len(probes) > 1 and varies([s for _, s in probes])
    best = max(probes, key=lambda p: p[1])[0] if effect else start
    return FocusResult(best, probes, effect)


def focus_due(settings: AutofocusSettings | None, state: Mapping[str, Any]) -> str:
    """Why the frame in flight needs a focus search ("" when it does not)."""
    current: DecisionRecord | None = state.get("current")
    if (settings is None or current is None or current.rescans or current.prediction is None
            or "focus" in (state.get("ineffective") or ())):
        return ""
    quality = current.quality
    if current.settings is not None and no_signal(quality.snr, current.settings.pixels):
        return ""
    focus = state.get("focus") or {}
    moves = (state.get("used") or {}).get("moves", 0)
    if settings.every and moves - focus.get("at_moves", 0) >= settings.every:
        return f"{settings.every} moves since the last focus"
    expected = (focus.get("expected") or {}).get(current.prediction.label)
    if expected and quality.sharpness is not None \
            and quality.sharpness < settings.ratio * expected:
        return (f"sharpness {quality.sharpness:.4g} below {settings.ratio:g} x "
                f"{expected:.4g} expected of {current.prediction.label}")
    return ""


def after_classify(settings: AutofocusSettings | None):
    """The router after classify: a focus search when one is due, else the policy's ruling."""
    def route(state: Mapping[str, Any]) -> str:
        return "autofocus" if focus_due(settings, state) else follow_ruling(state)
    return route


def after_autofocus(state: Mapping[str, Any]) -> str:
    """After a search the frame is acquired again; a refused search leaves the ruling."""
    if state.get("status") == "failed":
        return FINISH
    current: DecisionRecord = state["current"]
    if current.rescans and current.rescans[-1].reason == AUTOFOCUS:
        return "acquire"
    return follow_ruling(state)


def learned(focus: Mapping[str, Any] | None, record: DecisionRecord) -> dict[str, Any]:
    """The session's focus bookkeeping with a recorded good frame's sharpness learnt as what
    its class looks like in focus (a running mean)."""
    out = dict(focus or {})
    if not (record.quality.ok and record.label and record.quality.sharpness is not None):
        return out
    expected = dict(out.get("expected") or {})
    old = expected.get(record.label)
    value = record.quality.sharpness
    expected[record.label] = value if old is None else old + LEARN_RATE * (value - old)
    out["expected"] = expected
    return out
