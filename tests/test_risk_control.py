"""A policy set by the risk the user accepts: Learn-then-Test thresholds from the calibration
stored with the model, escalation kinds used only where they measured a gain, coverage and
risk reported apart, and a frame without signal recorded with no class after a longer dwell."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from plumbing_model import untrained
from rich.console import Console

from agent.config import RunConfig
from instruments.session_file.reader import SessionReader
from models.classifier import Classifier
from models.risk import RiskControl, risk_coverage
from twins.classes import SEM_CLASSES
from workflows.report.risk_coverage import risk_coverage as session_curve
from workflows.report.risk_summary import risk_rows
from workflows.session_assembly import BUNDLED_MODEL, StartError, run_session

pytestmark = pytest.mark.slow

torch.set_num_threads(1)


def synthetic(n: int, seed: int = 0) -> RiskControl:
    """Calibration frames whose top class is right with the probability it is given."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.3, 1.0, n)
    correct = rng.random(n) < confidence
    return RiskControl(tuple(confidence), (1,) * n, tuple(bool(c) for c in correct))


def test_a_lower_target_risk_certifies_a_higher_threshold_and_decides_fewer_frames():
    risk = synthetic(20000)
    loose, tight = risk.certify(0.1), risk.certify(0.05)
    assert tight.threshold > loose.threshold
    assert tight.coverage < loose.coverage
    for certified in (loose, tight):
        assert certified.empirical_risk <= certified.upper_bound <= certified.alpha
    # on fresh frames of the same kind the certified threshold keeps the risk
    fresh = synthetic(20000, seed=1)
    decided = fresh.decided(tight.threshold)
    assert (~np.asarray(fresh.correct)[decided]).mean() <= 0.05


def test_too_few_calibration_frames_certify_no_threshold():
    assert synthetic(50).certify(0.01).threshold is None


def test_the_risk_coverage_curve_falls_with_the_threshold():
    curve = [(p["coverage"], p["risk"])
             for p in risk_coverage([0.9, 0.8, 0.8, 0.5], [True, True, False, False])]
    assert curve == [(0.25, 0.0), (0.75, 1 / 3), (1.0, 0.5)]


@pytest.fixture(scope="module")
def bundled():
    clf = Classifier.load(BUNDLED_MODEL, class_names=list(SEM_CLASSES))
    assert clf.risk is not None                 # the bundled model ships its calibration
    return clf


def session(tmp_path: Path, classifier, **kw) -> dict:
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / f"{uuid.uuid4()}.h5"),
                       state_dir=str(tmp_path / "state"), bank="none", frames=10, seed=3,
                       imaging={"fov": 20e-6, "pixels": 128, "dwell": 2e-6}, **kw)
    run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    with SessionReader(config.out) as reader:
        return {"summary": reader.summary(), "rows": reader.rows(),
                "records": reader.records()}


def test_target_risk_sets_coverage_in_the_expected_direction(tmp_path, bundled):
    tight = session(tmp_path, bundled, target_risk=0.01)
    loose = session(tmp_path, bundled, target_risk=0.1)
    assert tight["summary"]["coverage"] < loose["summary"]["coverage"]
    control = tight["summary"]["risk_control"]
    assert control["threshold"] == bundled.risk.certify(0.01).threshold
    # the kinds that measured no gain are not used: no zoom-in, no adjudication
    measured_useless = {k for k, g in bundled.risk.gains.items() if not g.useful}
    assert measured_useless <= set(control["escalations_off"])
    assert "adjudication" in control["escalations_off"]        # never measured
    for run in (tight, loose):
        assert not any(r.adjudication for r in run["records"])
        assert not any(kind in a.adaptation for r in run["records"] for a in r.rescans
                       for kind in measured_useless)
    lines = dict(risk_rows(tight["summary"]))
    assert lines["risk expected"].startswith("<= 0.01 ")
    assert "decided frames" in lines["risk observed"]
    curve = session_curve(tight["rows"])          # the report's curve of this session
    labelled = [r for r in tight["rows"] if r.truth and r.label not in (None, "unknown")]
    assert curve is not None and curve.frames == len(labelled) > 0


def test_target_risk_needs_a_model_with_a_risk_calibration(tmp_path):
    bare = untrained(SEM_CLASSES)
    with pytest.raises(StartError, match="risk control"):
        session(tmp_path, bare, target_risk=0.01)


def test_a_frame_without_signal_gets_a_longer_dwell_then_no_label(tmp_path):
    clf = untrained(SEM_CLASSES)
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                       state_dir=str(tmp_path / "state"), bank="none", frames=1,
                       imaging={"fov": 20e-6, "pixels": 128, "dwell": 2e-6,
                                "beam_current": 1e-16})      # next to no electrons
    run_session(config, Console(quiet=True), quiet=True, classifier=clf)
    with SessionReader(config.out) as reader:
        (record,) = reader.records()
    first = record.rescans[0]
    assert first.new_settings.dwell == pytest.approx(4 * first.settings.dwell)
    assert record.label is None and record.route.value == "quality_failed"
