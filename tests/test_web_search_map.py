"""The search map on the web page (issue 26): a targeting session's stored overview, candidate
score map, visiting order and hits reach the page through the session's event stream and its
progress; the overview is served as PNG from the stored array; a session without an overview
shows no map. End to end: an overview hunt on the twin, approved from headless Chromium."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import event_model
import httpx
import numpy as np
import pytest
from PIL import Image
from plumbing_model import untrained
from web_browser import require_chromium, wait_for_page_url

from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig
from agent.event_stream import EventStream, StreamReader
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.overview import StoredOverview
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter
from instruments.utils.image8 import to_uint8
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope
from twins.operator_browser import headless_chromium
from workflows.web.approval import WebUIHandle, start_web_ui

pytestmark = pytest.mark.slow

TILE = 20e-6
@pytest.fixture
def ui() -> Iterator[WebUIHandle]:
    handle = start_web_ui(ApprovalBroker(), class_names=["Tips", "Powder"])
    yield handle
    handle.stop()


def _stored(tmp_path: Path) -> StoredOverview:
    """An overview as a session file holds it (written, then read back by the writer)."""
    image = np.add.outer(np.arange(24.0), np.arange(36.0)).astype(np.float32)
    scores = np.array([[0.1, 0.9, np.nan], [0.4, 0.2, 0.7]])
    with SessionWriter(tmp_path / "s.h5", {"session_id": "map"}) as writer:
        writer.write_overview(StoredOverview(
            image=image, origin=(-30e-6, -20e-6), pixel=(3 * TILE) / 36, scores=scores,
            area_origin=(-30e-6, -20e-6), tile=TILE,
            metadata={"strategy": "overview", "ranked": [[0, 1], [1, 2]]}))
        return writer.overview()


def _record(n: int, x: float, y: float, label: str) -> DecisionRecord:
    return DecisionRecord.model_validate({"frame_id": f"frame-{n}", "sequence": n,
                                          "position": {"x": x, "y": y}, "label": label,
                                          "route": "confident"})


def _get(ui: WebUIHandle, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{ui.port}{path}", params={"token": ui.token})


def test_the_stream_draws_the_map_into_the_pages_progress_and_serves_the_overview(
        tmp_path, ui):
    stored = _stored(tmp_path)
    stream, docs = EventStream(), []
    stream.subscribe(lambda name, doc: docs.append((name, doc)))
    stream.subscribe(ui.search_map)
    stream.start({"session_id": "map", "objective": "hunt:Tips:2"})
    assert "search_map" not in _get(ui, "/api/progress").json()
    assert _get(ui, "/api/search_map.png").status_code == 404     # no overview yet
    stream.overview(stored)
    for n, (x, y, label) in enumerate([(-10e-6, 0.0, "Tips"), (10e-6, 0.0, "Powder"),
                                       (10e-6, 10e-6, "Tips")], 1):
        stream.frame(_record(n, x, y, label), recorded=n, budgets_left={})
    stream.frame(_record(3, 10e-6, 10e-6, "Tips"), recorded=3, budgets_left={})  # a rerun
    stream.stop("completed")

    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    overview_keys = next(d["data_keys"] for n, d in docs
                         if n == "descriptor" and d["name"] == "overview")
    assert overview_keys["image"] == {"dtype": "array", "shape": [24, 36],
                                      "source": "micagent:overview"}
    shown = _get(ui, "/api/progress").json()["search_map"]
    assert [v["order"] for v in shown["visits"]] == [1, 2, 3]
    assert [v["hit"] for v in shown["visits"]] == [True, False, True] and shown["hits"] == 2
    assert shown["targets"] == ["Tips"] and shown["strategy"] == "overview"
    cells = shown["scores"]["cells"]
    assert cells[0][2] is None                              # no candidate in that tile
    np.testing.assert_array_equal(np.array(cells, dtype=float), stored.scores)
    assert shown["image"]["width"] == pytest.approx(3 * TILE)
    assert shown["scores"]["tile"] == pytest.approx(TILE)
    reply = _get(ui, "/api/search_map.png")
    assert reply.headers["content-type"] == "image/png"
    png = np.asarray(Image.open(io.BytesIO(reply.content)))
    np.testing.assert_array_equal(png, np.flipud(to_uint8(stored.image)))   # y upwards
    assert httpx.get(f"http://127.0.0.1:{ui.port}/api/search_map.png").status_code == 401


def test_a_survey_adds_no_map(ui):
    stream = EventStream()
    stream.subscribe(ui.search_map)
    stream.start({"session_id": "survey", "objective": "survey"})
    stream.frame(_record(1, 0.0, 0.0, "Tips"), recorded=1, budgets_left={})
    stream.stop("completed")
    assert "search_map" not in _get(ui, "/api/progress").json()


class Overviews(StreamReader):
    """The overview events a run emits."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def overview(self, data: dict) -> None:
        self.seen.append(data)


def _run_hunt(tmp_path: Path, classifier, session_id: str) -> list[dict]:
    """Run (or resume) a two-frame overview hunt on the twin; the overview events it emitted."""
    config = RunConfig(session_id=session_id, out=str(tmp_path / "s.h5"), frames=2,
                       objective="hunt:Tips:2", strategy="overview", confidence=0.0,
                       state_dir=str(tmp_path / "state"), pipeline=False,
                       imaging={"fov": TILE, "pixels": 64, "dwell": 2e-6})
    session = Session(config, SessionParts(GuardedMicroscope(TwinMicroscope(seed=0),
                                                             SafetyEnvelope()), classifier))
    seen = Overviews()
    session.stream.subscribe(seen)
    try:
        session.run()
    finally:
        session.close()
    return seen.seen


def test_the_overview_event_is_the_stored_one_and_a_resumed_run_sends_it_again(tmp_path):
    """With the frames recorded before the resume: a page that joins then draws them too."""
    classifier = untrained(SEM_CLASSES)
    first = _run_hunt(tmp_path, classifier, "hunt-map")
    again = _run_hunt(tmp_path, classifier, "hunt-map")     # the checkpoint says: done
    with SessionReader(tmp_path / "s.h5") as reader:
        stored, records = reader.overview(), reader.records()
    assert len(first) == len(again) == 1
    for data in (first[0], again[0]):
        np.testing.assert_array_equal(data["image"], stored.image)
        np.testing.assert_array_equal(data["scores"], stored.scores)
        assert (data["origin_x"], data["origin_y"]) == pytest.approx(stored.origin)
        assert data["tile"] == pytest.approx(stored.tile)
    assert json.loads(first[0]["visited"]) == []          # sent before any frame
    visited = json.loads(again[0]["visited"])
    assert len(records) == 2
    assert [(v["frame_id"], v["recorded"], v["label"]) for v in visited] == \
        [(r.frame_id, n, r.label) for n, r in enumerate(records, 1)]
    assert [(v["x"], v["y"]) for v in visited] == \
        [pytest.approx((r.position.x, r.position.y)) for r in records]


def test_a_page_that_joins_a_resumed_run_draws_the_frames_recorded_before(tmp_path, ui):
    stored = _stored(tmp_path)
    earlier = [_record(1, -10e-6, 0.0, "Tips"), _record(2, 10e-6, 0.0, "Powder")]
    stream = EventStream()
    stream.subscribe(ui.search_map)
    stream.start({"session_id": "map", "objective": "hunt:Tips:2"})
    stream.overview(stored, visited=earlier)
    stream.frame(_record(3, 10e-6, 10e-6, "Tips"), recorded=3, budgets_left={})
    stream.stop("completed")
    shown = _get(ui, "/api/progress").json()["search_map"]
    assert [(v["order"], v["label"], v["hit"]) for v in shown["visits"]] == \
        [(1, "Tips", True), (2, "Powder", False), (3, "Tips", True)]
    assert shown["hits"] == 2


def _markers(driver) -> list[str]:
    from selenium.webdriver.common.by import By
    return [g.get_attribute("data-order")
            for g in driver.find_elements(By.CSS_SELECTOR, "#search-map g.visit")]


def _new_card(driver, answered: list[str]):
    """The first approval card not answered yet (False: none)."""
    from selenium.webdriver.common.by import By
    cards = [c for c in driver.find_elements(By.CSS_SELECTOR, "section.approval")
             if c.get_attribute("data-request-id") not in answered]
    return cards[0] if cards else False


def _answer(driver, wait, card, answered: list[str]) -> None:
    """Check the map against the frames recorded so far and the one waiting (marked where it
    was taken), then answer the card: the second frame is relabelled as the hunted class, every
    other one approved."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if not answered:                     # the overview came before the first frame
        wait.until(lambda d: d.find_elements(By.ID, "search-map"))
        served = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(document.querySelector('#search-map image').getAttribute('href'))"
            ".then(r => done([r.status, r.headers.get('content-type')]));")
        assert served == [200, "image/png"]
    wait.until(lambda d: len(_markers(d)) == len(answered))     # one per recorded frame
    assert _markers(driver) == [str(n) for n in range(1, len(answered) + 1)]
    request_id = card.get_attribute("data-request-id")
    wait.until(lambda d: [g.get_attribute("data-request-id") for g in d.find_elements(
        By.CSS_SELECTOR, "#search-map g.awaiting")] == [request_id])   # the frame waiting
    if len(answered) == 1:
        Select(card.find_element(By.CSS_SELECTOR, "select.relabel-choice")
               ).select_by_value("Tips")
        card.find_element(By.CSS_SELECTOR, "button.btn-relabel").click()
    else:
        card.find_element(By.CSS_SELECTOR, "button.btn-approve").click()
    answered.append(request_id)


def test_an_overview_hunt_shows_its_map_growing_in_headless_chromium(tmp_path: Path) -> None:
    """Every frame waits for the operator (--approve all): the map is there before the first
    frame is recorded, marks the frame waiting, gains one numbered marker per recorded frame,
    rings the frame relabelled as the hunted class, and its hit count is the session file's."""
    require_chromium()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    session_file, err_log = tmp_path / "hunt.h5", tmp_path / "stderr.log"
    command = [sys.executable, "-c", "from workflows.cli.app import app; app()", "run",
               "--objective", "hunt:Tips:3", "--strategy", "overview", "--frames", "3",
               "--pixels", "64", "--approve", "all", "--ui", "web", "--no-pipeline",
               "--out", str(session_file), "--state-dir", str(tmp_path / "state"), "--quiet"]
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stdout.log", "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=tmp_path)
    answered: list[str] = []
    try:
        url = wait_for_page_url(err_log, proc, timeout=240).group(1)
        with headless_chromium() as driver:
            wait = WebDriverWait(driver, 240,
                                 ignored_exceptions=[StaleElementReferenceException])
            driver.get(url)
            driver.find_element(By.ID, "operator").send_keys("Ada")
            while proc.poll() is None:
                card = wait.until(lambda d: proc.poll() is not None or _new_card(d, answered))
                if card is True:                 # the session ended
                    break
                try:
                    _answer(driver, wait, card, answered)
                except StaleElementReferenceException:   # the queue was redrawn meanwhile
                    continue
            assert proc.wait(timeout=240) == 0, err_log.read_text()
            wait.until(lambda d: d.find_elements(By.ID, "final"))
            markers = _markers(driver)
            hits_shown = driver.find_element(By.ID, "map-hits").text
            ringed = len(driver.find_elements(By.CSS_SELECTOR, "#search-map g.visit.hit"))
            waiting = driver.find_elements(By.CSS_SELECTOR, "#search-map g.awaiting")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    with SessionReader(session_file) as reader:
        records = reader.records()
    hits = sum(r.label == "Tips" for r in records)
    assert len(markers) == len(records) == len(answered) >= 2
    assert hits >= 1 and hits_shown == str(hits) and ringed == hits
    assert waiting == []                 # nothing waits once the session has ended
