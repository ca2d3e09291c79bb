"""`micagent report`: an HTML page and valid PNGs from a session file, for rich twin sessions
and for sessions that lack positions, ground truth or timings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from typer.testing import CliRunner
from web_browser import require_chromium

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.session_file.decision_record import DecisionRecord, RescanRecord
from instruments.session_file.decision_row import DecisionRow
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter
from twins.operator_browser import headless_chromium
from workflows.cli.app import app
from workflows.report.format import duration, number, percent, rows, value, when, with_unit
from workflows.report.human_acts import Act, rescan_act
from workflows.report.mosaic import ROUTE_WORDS
from workflows.report.risk_coverage import risk_coverage
from workflows.report.session_report import build_report

pytestmark = pytest.mark.slow

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
    """The figures of the page (the frames' own PNGs, under frames/, left out)."""
    return [name for name in re.findall(r'<img[^>]* src="([^"]+)"',
                                        page.read_text(encoding="utf-8"))
            if not name.startswith("frames/")]


def test_report_of_a_twin_session_has_every_figure(tmp_path: Path) -> None:
    page = build_report(_session(tmp_path / "s.h5"), tmp_path / "report", least_certain=5)
    images = _referenced_images(page)
    assert set(images) == {"funnel.png", "classes.png", "confidence.png", "reliability.png",
                           "risk_coverage.png", "least_certain.png", "timings.png"}
    for name in images:
        with Image.open(page.parent / name) as img:
            img.verify()
            assert img.format == "PNG"
    text = page.read_text(encoding="utf-8")
    assert "not available" not in text
    assert "Ada" in text and "approve" in text  # the human acts
    assert "Classifier accuracy" in text and "final-label accuracy" in text


def test_every_frame_has_a_line_with_its_image_label_route_and_confidence(
        tmp_path: Path) -> None:
    session = _session(tmp_path / "s.h5", frames=6)
    page = build_report(session, tmp_path / "report")
    with SessionReader(session) as reader:
        rows = reader.rows()
    table = page.read_text(encoding="utf-8").split('<table class="frames">')[1]
    lines = table.split("</table>")[0].split("<tr>")[2:]
    assert len(lines) == 6
    for row, line in zip(rows, lines, strict=True):
        full, thumb = re.findall(r'(?:href|src)="(frames/[^"]+)"', line)
        for name in (full, thumb):
            with Image.open(page.parent / name) as img:
                assert img.format == "PNG"
        assert f"<td>{row.sequence}</td>" in line and row.label in line
        assert f"<td>{row.confidence:.2f}</td>" in line
        assert ROUTE_WORDS[row.route] in line and "sharpness 1; SNR 8" in line


def test_the_header_is_formatted_for_people(tmp_path: Path) -> None:
    page = build_report(_session(tmp_path / "s.h5", frames=9), tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    head = text.split("<details>")[0]
    assert re.search(r"<dt>Accuracy</dt><dd>\d+\.\d %", head)
    assert "<dt>Frames</dt><dd>9 recorded; session completed" in head
    assert not re.search(r"\d\.\d{5,}", text)          # no 0.8888888888888888 anywhere


def _with_human_acts(path: Path) -> Path:
    """A session of two frames: one reached by a move a human approved and rescanned at a
    human's request before being relabelled, one skipped."""
    rng = np.random.default_rng(2)
    writer = SessionWriter(path, {"instrument": "twin", "model": {"class_names": CLASSES}})
    for i in range(2):
        frame = Frame(image=rng.random((64, 64)), instrument_id="twin",
                      settings=ImagingSettings(fov=20e-6, pixels=64), stage=StagePosition(),
                      sequence=i)
        record = _record(frame, i, rng)
        record["route"], record["adjudication"] = "human", None
        if i == 0:
            record["position"]["approval"] = {"decision": "approve", "operator": "Bea",
                                              "note": "edge of the stub", "time": 1.8e9}
            asked = {"operator": "Bea", "time": 1.8e9 + 30, "proposal": "Fibres",
                     "decision": "rescan", "note": "too noisy", "rescan_change": "dwell"}
            record["rescans"] = [{"settings": {"dwell": 2e-6}, "new_settings": {"dwell": 8e-6},
                                  "reason": "operator Bea asked (dwell)", "human": asked}]
            record["human"] = {"operator": "Bea", "time": 1.8e9 + 60, "proposal": "Fibres",
                               "decision": "relabel", "label": "Tips", "note": "needle tips",
                               "changed": True}
            record["label"] = "Tips"
        else:
            record["human"] = {"operator": "Cy", "time": 1.8e9 + 120, "proposal": "Powder",
                               "decision": "skip", "label": None, "note": "charging",
                               "changed": True}
            record["label"] = None
        assert writer.write_frame(frame, DecisionRecord.from_stored(record))
    writer.close("completed")
    return path


def test_every_human_act_in_the_file_is_in_the_report(tmp_path: Path) -> None:
    page = build_report(_with_human_acts(tmp_path / "h.h5"), tmp_path / "report")
    table = page.read_text(encoding="utf-8").split("<h2>Human acts</h2>")[1].split(
        "</table>")[0]
    lines = [re.findall(r"<td>([^<]*)</td>", line) for line in table.split("<tr>")[2:]]
    assert lines == [
        ["#0", "approve move", "Bea", "2027-01-15 08:00:00 UTC", "edge of the stub",
         "stage moved outside the free zone"],
        ["#0", "reject and rescan", "Bea", "2027-01-15 08:00:30 UTC", "too noisy",
         "rescanned: dwell 2 µs → 8 µs (dwell asked)"],
        ["#0", "relabel", "Bea", "2027-01-15 08:01:00 UTC", "needle tips",
         "label Fibres → Tips"],
        ["#1", "skip", "Cy", "2027-01-15 08:02:00 UTC", "charging",
         "frame kept without a label"]]


def test_the_mosaic_is_to_scale_and_no_json_is_visible_in_chromium(tmp_path: Path) -> None:
    require_chromium()
    session = _session(tmp_path / "s.h5", frames=8)
    page = build_report(session, tmp_path / "report")
    with SessionReader(session) as reader:
        rows = {row.index: row for row in reader.rows()}
    with headless_chromium() as driver:
        driver.get(page.as_uri())
        driver.find_element(By.TAG_NAME, "summary").click()     # the configuration, open
        text = driver.find_element(By.TAG_NAME, "body").text
        tiles = driver.find_elements(By.CSS_SELECTOR, ".mosaic .tile")
        boxes = {int(t.get_attribute("data-index")): t.rect for t in tiles}
        first = tiles[0]
        href = first.get_attribute("href")
        first.click()
        driver.switch_to.window(driver.window_handles[-1])
        opened = driver.current_url
    assert "Run configuration" in text and "software" in text     # the table, unfolded
    assert "{" not in text and "}" not in text
    assert "Instrument" in text and "Accuracy" in text
    assert sorted(boxes) == sorted(rows)
    # one scale for both axes: each frame's drawn side is its field of view, and the drawn
    # distance between any two frames is their stage distance, in the same pixels per metre
    scale = boxes[0]["width"] / rows[0].fov
    for i, box in boxes.items():
        assert box["width"] == pytest.approx(rows[i].fov * scale, rel=0.02)
        assert box["height"] == pytest.approx(rows[i].fov * scale, rel=0.02)
        dx = box["x"] - boxes[0]["x"]
        dy = box["y"] - boxes[0]["y"]
        assert dx == pytest.approx((rows[i].x - rows[0].x) * scale, abs=1.0)
        assert dy == pytest.approx(-(rows[i].y - rows[0].y) * scale, abs=1.0)  # y up
    assert opened == href and opened.endswith(".png")


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


def test_values_are_formatted_for_people() -> None:
    assert number(0.8888888888888888) == "0.889" and number(36.0) == "36"
    assert number(500000) == "500 000"
    assert with_unit(2e-5, "m") == "20 µm" and with_unit(1e-10, "A") == "100 pA"
    assert value("dwell", 2e-6) == "2 µs" and value("zoom_unsure", False) == "no"
    assert value("stage_x", [-0.001, 0.001]) == "-1 mm to 1 mm" and value("bank", None) == "–"
    assert list(rows({"imaging": {"fov": 2e-5, "beam_energy": 5000.0}, "max_rescans": 2})) == [
        ("imaging › fov", "20 µm"), ("imaging › beam energy", "5 keV"), ("max rescans", "2")]
    assert percent(8 / 9) == "88.9 %" and duration(200) == "3 min 20 s"
    assert when(1.8e9) == "2027-01-15 08:00:00 UTC"


def test_risk_coverage_keeps_the_most_confident_frames_first() -> None:
    def row(i: int, confidence: float, label: str, route: str = "confident") -> DecisionRow:
        return DecisionRow(index=i, frame_id=str(i), confidence=confidence, label=label,
                           route=route, truth="Tips")

    curve = risk_coverage([row(0, 0.9, "Tips"), row(1, 0.5, "Fibres", "contested"),
                           row(2, 0.8, "Tips"), row(3, 0.7, "Powder"),
                           row(4, 0.6, "unknown", "unknown")])     # unknown: not a class
    assert curve is not None and curve.frames == 4
    np.testing.assert_allclose(curve.coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.risk, [0, 0, 1 / 3, 0.5])
    assert curve.area == pytest.approx((1 / 3 + 0.5) / 4)
    assert curve.agent == (0.75, pytest.approx(1 / 3))      # the three confident frames
    assert risk_coverage([row(0, 0.9, "Tips").model_copy(update={"truth": None})]) is None


def test_a_rescan_asked_in_a_file_before_the_audit_trail_is_still_a_human_act() -> None:
    attempt = RescanRecord.model_validate({"settings": {"dwell": 2e-6},
                                           "new_settings": {"dwell": 8e-6},
                                           "reason": "operator asked"})
    assert rescan_act(3, attempt) == Act(3, "reject and rescan", "not recorded", "–", "",
                                          "rescanned: dwell 2 µs → 8 µs")
    agents_own = RescanRecord.model_validate({"reason": "low snr"})
    assert rescan_act(3, agents_own) is None
