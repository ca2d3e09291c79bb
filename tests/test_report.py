"""`micagent report`: an HTML page and valid PNGs from a session file, for rich twin sessions
and for sessions that lack positions, ground truth or timings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.writer import SessionWriter
from workflows.cli.app import app
from workflows.report.session_report import build_report

CLASSES = ["Fibres", "Particles", "Powder", "Tips"]
ROUTES = ["confident", "confident", "rescan", "adjudicated", "human", "contested"]


def _record(frame: Frame, i: int, rng: np.random.Generator) -> dict[str, Any]:
    p = rng.dirichlet(np.ones(len(CLASSES)) * 0.6)
    label = CLASSES[int(np.argmax(p))]
    route = ROUTES[i % len(ROUTES)]
    return {
        "frame_id": frame.frame_id, "sequence": i,
        "position": {"x": frame.stage.x, "y": frame.stage.y},
        "tile": {"row": i // 4, "col": i % 4},
        "prediction": {"label": label, "confidence": float(p.max()),
                       "probabilities": dict(zip(CLASSES, map(float, p), strict=True)),
                       "top_k": [], "conformal_set": [label], "entropy": 0.0,
                       "lmm_label": None},
        "label": label, "route": route,
        "rescans": [{"settings": {"dwell": 4e-6}, "reason": "noisy", "quality": {},
                     "prediction": {}}] if route == "rescan" else [],
        "quality": {"sharpness": 1.0, "snr": 8.0, "drift_px": 0.1, "ok": True},
        "adjudication": {"adjudicator": "offline-knn", "answer": {"label": label}}
        if route in ("adjudicated", "contested", "human") else None,
        "human": {"operator": "Ada", "time": "2026-11-23T20:00:00Z", "proposal": label,
                  "decision": "approve", "label": label, "note": "", "changed": False}
        if route == "human" else None,
        "timings": {"acquire_s": 0.05 + 0.01 * i, "classify_s": 0.02, "total_s": 0.08},
    }


def _session(path: Path, frames: int = 12, with_positions: bool = True,
             operator: str = "Ada") -> Path:
    rng = np.random.default_rng(0)
    writer = SessionWriter(path, {"instrument": "twin", "model": {"class_names": CLASSES}})
    for i in range(frames):
        stage = (StagePosition(x=(i % 4) * 20e-6, y=(i // 4) * 20e-6) if with_positions
                 else StagePosition())
        frame = Frame(image=rng.random((64, 64)), instrument_id="twin",
                      settings=ImagingSettings(fov=20e-6, pixels=64), stage=stage,
                      sequence=i,
                      evaluation={"label": CLASSES[i % len(CLASSES)]} if with_positions else {})
        record = _record(frame, i, rng)
        if record["human"]:
            record["human"]["operator"] = operator
        if not with_positions:
            record.pop("timings")
            record["tile"] = None
            record["position"] = {"x": 0.0, "y": 0.0}
        assert writer.write_frame(frame, DecisionRecord.from_stored(record))
    writer.close("completed")
    return path


def _referenced_images(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8"))


def test_report_of_a_twin_session_has_every_figure(tmp_path: Path) -> None:
    page = build_report(_session(tmp_path / "s.h5"), tmp_path / "report", least_certain=5)
    images = _referenced_images(page)
    assert set(images) == {"stage_map.png", "funnel.png", "classes.png", "confidence.png",
                           "reliability.png", "least_certain.png", "timings.png"}
    for name in images:
        with Image.open(page.parent / name) as img:
            img.verify()
            assert img.format == "PNG"
    text = page.read_text(encoding="utf-8")
    assert "not available" not in text
    assert "Ada" in text and "approve" in text  # the human decision table
    assert "Classifier accuracy" in text and "final-label accuracy" in text


def test_report_says_what_a_session_without_positions_truth_or_timings_lacks(
        tmp_path: Path) -> None:
    session = _session(tmp_path / "replayed.h5", frames=5, with_positions=False)
    page = build_report(session, tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    assert "not available: the frames carry no distinct stage positions" in text
    assert "not available: the frames carry no ground truth" in text
    assert "not available: the records carry no timings" in text
    images = _referenced_images(page)
    assert {"funnel.png", "classes.png", "confidence.png", "least_certain.png"} <= set(images)
    assert all((page.parent / name).is_file() for name in images)


def test_an_operator_name_that_looks_like_tex_is_drawn_as_typed(tmp_path: Path) -> None:
    session = _session(tmp_path / "s.h5", frames=12, operator="$\\foo{$")
    result = CliRunner().invoke(app, ["report", str(session), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "$\\foo{$" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")


def test_report_command_writes_the_page_and_refuses_non_sessions(
        tmp_path: Path, shared_nsid_file: Path) -> None:
    runner = CliRunner()
    session = _session(tmp_path / "s.h5", frames=4)
    result = runner.invoke(app, ["report", str(session), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "index.html").is_file()

    before = shared_nsid_file.read_bytes()
    refused = runner.invoke(app, ["report", str(shared_nsid_file), "--out",
                                  str(tmp_path / "nsid")])
    assert refused.exit_code == 2
    assert "no micagent session records" in refused.output
    assert shared_nsid_file.read_bytes() == before

    missing = runner.invoke(app, ["report", str(tmp_path / "absent.h5"), "--out",
                                  str(tmp_path / "x")])
    assert missing.exit_code != 0 and "no such file" in missing.output


def test_report_of_an_empty_session(tmp_path: Path) -> None:
    page = build_report(_session(tmp_path / "empty.h5", frames=0), tmp_path / "r")
    assert "not available: the session has no frames" in page.read_text(encoding="utf-8")


def test_report_of_frames_replayed_from_a_real_nsid_file(tmp_path: Path,
                                                          shared_nsid_file: Path) -> None:
    from instruments.devices.replay import ReplayMicroscope

    rng = np.random.default_rng(1)
    replay = ReplayMicroscope(shared_nsid_file)
    writer = SessionWriter(tmp_path / "nsid.h5", {"instrument": f"replay://{shared_nsid_file}"})
    try:
        for i in range(len(replay)):
            frame = replay.acquire()
            record = _record(frame, i, rng)
            del record["timings"], record["tile"]
            assert writer.write_frame(frame, DecisionRecord.from_stored(record))
    finally:
        replay.close()
        writer.close("completed")
    page = build_report(tmp_path / "nsid.h5", tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    assert "not available: the frames carry no ground truth" in text
    assert "not available: the records carry no timings" in text
    for name in _referenced_images(page):
        with Image.open(page.parent / name) as img:
            img.verify()
