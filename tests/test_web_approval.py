"""The web approval page over an ApprovalBroker: token access, the evidence it serves, and a
decision posted (by HTTP or by a click in headless Chromium) reaching the waiting session."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from web_browser import require_chromium

from agent.approval_broker import ApprovalBroker
from agent.approval_request import ApprovalRequest, HumanDecision, LabelRequest, MoveRequest
from instruments.session_file.decision_record import DecisionRecord
from twins.operator_browser import headless_chromium
from workflows.web.approval import TOKEN_HEADER, WebUIHandle, start_web_ui

pytestmark = pytest.mark.slow

CLASSES = ["Fibres", "Nanowires", "Particles", "Powder"]


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def thumbs(tmp_path: Path) -> Path:
    """Thumbnails as the session writes them: PNG files."""
    for seed in (1, 2):
        (tmp_path / f"thumb{seed}.png").write_bytes(_png(seed))
    return tmp_path


def _payload(thumbs: Path | None = None, **extra: Any) -> LabelRequest:
    probabilities = {"Fibres": 0.48, "Nanowires": 0.41, "Particles": 0.08, "Powder": 0.03}
    record = DecisionRecord.model_validate({
        "frame_id": "0f3c2a9e-1111-2222-3333-444455556666",
        "position": {"x": 12e-6, "y": -4e-6},
        "prediction": {"label": "Fibres", "confidence": 0.48, "probabilities": probabilities,
                       "top_k": [["Fibres", 0.48], ["Nanowires", 0.41]],
                       "conformal_set": ["Fibres", "Nanowires"]},
        "adjudication": {"adjudicator": "offline-knn",
                         "answer": {"label": "Nanowires", "confidence": 0.7,
                                    "rationale": "long thin bright strands on dark ground"}},
        "sequence": extra.pop("sequence", 7), "rescans": extra.pop("rescans", [])})
    return LabelRequest(
        reason="classifier unsure after adjudication", record=record, proposal="Fibres",
        on_approve="record the frame as Fibres", labels=tuple(CLASSES),
        thumbnail=str(thumbs / "thumb1.png") if thumbs else None, **extra)


MOVE = MoveRequest(reason="outside the free zone", target={"x": 3e-3, "y": 0.0},
                   proposal="move the stage to (0.003, 0) m")


class Session:
    """Stands in for the running graph: submits a payload and blocks on the broker."""

    def __init__(self, broker: ApprovalBroker, request: ApprovalRequest) -> None:
        self.request_id = broker.submit(request)
        self.decision: HumanDecision | None = None
        self._thread = threading.Thread(target=self._wait, args=(broker,), daemon=True)
        self._thread.start()

    def _wait(self, broker: ApprovalBroker) -> None:
        self.decision = broker.wait(self.request_id, timeout=30)

    def resumed_with(self, timeout: float = 30) -> dict[str, Any] | None:
        self._thread.join(timeout)
        return self.decision.model_dump(mode="json", exclude_none=True) \
            if self.decision else None


@pytest.fixture
def broker() -> ApprovalBroker:
    return ApprovalBroker()


@pytest.fixture
def ui(broker: ApprovalBroker) -> Iterator[WebUIHandle]:
    handle = start_web_ui(broker, class_names=CLASSES)
    yield handle
    handle.stop()
    assert not handle.thread.is_alive()


def _base(ui: WebUIHandle) -> str:
    return f"http://127.0.0.1:{ui.port}"


def test_binds_loopback_on_a_free_port_with_a_random_token(ui: WebUIHandle) -> None:
    other = start_web_ui(ApprovalBroker())
    try:
        assert ui.host == other.host == "127.0.0.1"
        assert ui.port != other.port and ui.port > 0
        assert len(ui.token) >= 32 and ui.token != other.token
        assert ui.url == f"http://127.0.0.1:{ui.port}/?token={ui.token}"
    finally:
        other.stop()


def test_a_port_in_use_is_a_clear_error(ui: WebUIHandle) -> None:
    with pytest.raises(OSError, match=f"cannot serve the approval page on 127.0.0.1:{ui.port}"):
        start_web_ui(ApprovalBroker(), port=ui.port)


def test_every_endpoint_refuses_a_missing_or_wrong_token(broker, ui) -> None:
    request_id = broker.submit(_payload())
    base = _base(ui)
    for method, path in [("GET", "/"), ("GET", "/api/pending"), ("GET", "/api/progress"),
                         ("GET", f"/api/image/{request_id}/frame"),
                         ("POST", f"/api/decide/{request_id}")]:
        body = {"decision": "approve", "operator": "mallory"} if method == "POST" else None
        assert httpx.request(method, base + path, json=body).status_code == 401, path
        wrong = httpx.request(method, base + path, json=body, params={"token": "guess"},
                              headers={TOKEN_HEADER: "guess"})
        assert wrong.status_code == 401, path
    assert [p.request_id for p in broker.pending()] == [request_id]


def test_pending_view_carries_the_evidence_and_images_are_served(broker, ui, thumbs) -> None:
    request_id = broker.submit(_payload(thumbs))
    headers = {TOKEN_HEADER: ui.token}
    [view] = httpx.get(_base(ui) + "/api/pending", headers=headers).json()
    assert view["request_id"] == request_id and view["sequence"] == 7
    assert view["top_k"][0] == ["Fibres", 0.48] and len(view["top_k"]) == 4
    assert view["conformal_set"] == ["Fibres", "Nanowires"]
    assert view["adjudicator"] == "offline-knn"
    assert view["adjudication"]["rationale"] == "long thin bright strands on dark ground"
    assert view["proposal"] == "Fibres" and view["class_names"] == CLASSES
    assert view["has_image"] and not view["has_previous"]
    image = httpx.get(_base(ui) + f"/api/image/{request_id}/frame", headers=headers)
    assert image.headers["content-type"] == "image/png" and image.content == _png(1)
    missing = httpx.get(_base(ui) + f"/api/image/{request_id}/previous", headers=headers)
    assert missing.status_code == 404


def test_the_previous_image_is_the_last_earlier_attempt_still_there(broker, ui,
                                                                     thumbs) -> None:
    tiff = thumbs / "first.tif"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tiff)
    rescans = [{"reason": "noise", "thumbnail": str(tiff)},
               {"reason": "noise", "thumbnail": str(thumbs / "gone.png")}]
    request_id = broker.submit(_payload(thumbs, rescans=rescans))
    headers = {TOKEN_HEADER: ui.token}
    frame = httpx.get(_base(ui) + f"/api/image/{request_id}/frame", headers=headers)
    assert frame.content == _png(1)
    previous = httpx.get(_base(ui) + f"/api/image/{request_id}/previous", headers=headers)
    assert previous.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(previous.content)).size == (8, 8)


def test_posted_decision_resumes_the_waiting_session(broker, ui) -> None:
    session = Session(broker, _payload())
    reply = httpx.post(_base(ui) + f"/api/decide/{session.request_id}",
                       params={"token": ui.token},
                       json={"decision": "relabel", "label": "Nanowires", "operator": "Ada",
                             "note": "strands, not fibres"})
    assert reply.status_code == 200
    assert session.resumed_with() == {"decision": "relabel", "label": "Nanowires",
                                      "operator": "Ada", "note": "strands, not fibres"}
    assert reply.json()["label"] == "Nanowires"
    assert broker.pending() == []
    again = httpx.post(_base(ui) + f"/api/decide/{session.request_id}",
                       params={"token": ui.token}, json={"decision": "skip", "operator": "Ada"})
    assert again.status_code == 404


@pytest.mark.parametrize("body", [
    {"decision": "delete", "operator": "Ada"},
    {"decision": "relabel", "label": "Unicorns", "operator": "Ada"},
    {"decision": "relabel", "operator": "Ada"},
    {"decision": "approve", "operator": ""},
    {"decision": "approve", "operator": " \t "},
    {"decision": "approve", "operator": "Ada\x1b[31m"},
    {"decision": "approve", "operator": "A" * 201},
    {"decision": "approve", "operator": "Ada", "note": "n" * 201},
    {"decision": "approve"},
    {"decision": "approve", "operator": "Ada", "role": "admin"},
    ["approve"],
], ids=["unknown", "label-outside", "no-label", "blank", "whitespace", "control", "long",
        "long-note", "no-operator", "unknown-key", "not-an-object"])
def test_bad_decisions_are_refused_and_the_request_stays_pending(broker, ui, body) -> None:
    request_id = broker.submit(_payload())
    reply = httpx.post(_base(ui) + f"/api/decide/{request_id}",
                       headers={TOKEN_HEADER: ui.token}, json=body)
    assert reply.status_code == 422 and reply.json()["detail"]
    assert [p.request_id for p in broker.pending()] == [request_id]


def test_progress_is_served_as_the_session_reports_it(broker, ui) -> None:
    broker.update_progress(recorded=3, total=5, routes={"confident": 2, "human": 1})
    progress = httpx.get(_base(ui) + "/api/progress", params={"token": ui.token}).json()
    assert progress == {"recorded": 3, "total": 5, "routes": {"confident": 2, "human": 1}}


def test_the_page_ends_on_the_session_summary_once_the_server_stops(broker, ui) -> None:
    """The page reads the final state before the server goes: it shows the result, not an
    unreachable server, and no internal budget."""
    require_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    broker.update_progress(recorded=1, total=2, routes={"human": 1})
    with headless_chromium() as driver:
        driver.get(ui.url)
        WebDriverWait(driver, 20).until(lambda d: "1 of 2" in d.find_element(
            By.ID, "progress").text)
        broker.finish({"status": "completed", "reason": "", "file": "/data/s.h5",
                       "session_id": "s-1", "frames": 2, "labels": {"Tips": 2},
                       "routes": {"human": 2}, "human_decisions": {"approve": 2},
                       "accuracy": 0.5, "scored_frames": 2})
        ui.close()                       # returns once the page has read the final state
        assert ui.watch.final_served.is_set()
        final = WebDriverWait(driver, 20).until(
            lambda d: d.find_elements(By.ID, "final"))[0].text
        status = driver.find_element(By.ID, "status").text
        header = driver.find_element(By.TAG_NAME, "header").text
    assert final.startswith("Session complete")
    for shown in ("frames recorded 2", "labels Tips 2", "human decisions approve 2",
                  "accuracy 50.0% of 2 frames", "session file /data/s.h5"):
        assert shown in final
    assert status.startswith("Session complete") and "unreachable" not in status
    assert "budget" not in header and "tokens" not in header


def _answer(card, choice: str, value: str, note: str, button: str) -> None:
    """On a card: pick `value` in the `choice` list, type the note, click `button`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(card.find_element(By.CSS_SELECTOR, f"select.{choice}")).select_by_value(value)
    card.find_element(By.CSS_SELECTOR, "input.note").send_keys(note)
    card.find_element(By.CSS_SELECTOR, f"button.{button}").click()


def test_a_click_in_headless_chromium_reaches_the_session(broker, ui, thumbs) -> None:
    require_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    broker.update_progress(recorded=2, total=5, routes={"confident": 2})
    first = Session(broker, _payload(thumbs))
    second = Session(broker, _payload(sequence=8))
    with headless_chromium() as driver:
        wait = WebDriverWait(driver, 20)
        driver.get(_base(ui) + "/")
        assert "missing or wrong access token" in driver.page_source

        driver.get(ui.url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.approval")) == 2)
        cards = driver.find_elements(By.CSS_SELECTOR, "section.approval")
        card = cards[0]
        assert card.get_attribute("data-request-id") == first.request_id
        assert len(card.find_elements(By.CSS_SELECTOR, "svg.topk rect")) == 8  # 4 bars + 4 bg
        assert "Nanowires" in card.find_element(By.CSS_SELECTOR, ".chips").text
        assert "long thin bright strands" in card.text
        img = card.find_element(By.CSS_SELECTOR, ".frames img")
        wait.until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img) == 48)
        wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "frames: 2 of 5"))

        card.find_element(By.CSS_SELECTOR, "button.btn-approve").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "notice"), "operator name"))
        assert broker.pending()[0].request_id == first.request_id

        driver.find_element(By.ID, "operator").send_keys("Ada")
        card.find_element(By.CSS_SELECTOR, "button.btn-approve").click()
        assert first.resumed_with() == {"decision": "approve", "operator": "Ada", "note": ""}

        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.approval")) == 1)
        card = driver.find_element(By.CSS_SELECTOR, "section.approval")
        assert card.get_attribute("data-request-id") == second.request_id
        assert "no image in request" in card.text
        _answer(card, "relabel-choice", "Powder", "granular", "btn-relabel")
        assert second.resumed_with() == {"decision": "relabel", "label": "Powder",
                                         "operator": "Ada", "note": "granular"}
        wait.until(ec.text_to_be_present_in_element((By.ID, "queue"), "No pending approvals"))

        rejected = Session(broker, _payload(sequence=9))
        card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "section.approval")))
        _answer(card, "rescan-choice", "dwell", "too noisy", "btn-rescan")
        assert rejected.resumed_with() == {"decision": "rescan", "rescan_change": "dwell",
                                           "operator": "Ada", "note": "too noisy"}
        wait.until(ec.text_to_be_present_in_element((By.ID, "queue"), "No pending approvals"))

        move = Session(broker, MOVE)
        card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "section.approval")))
        assert "Stage move" in card.text and "x 3000.0 µm" in card.text
        shown = [b.text for b in card.find_elements(By.TAG_NAME, "button") if b.is_displayed()]
        assert shown == ["Approve", "Skip"]
        card.find_element(By.CSS_SELECTOR, "button.btn-skip").click()
        assert move.resumed_with() == {"decision": "skip", "operator": "Ada", "note": ""}


def test_a_stage_move_request_offers_only_its_choices(broker, ui) -> None:
    session = Session(broker, MOVE)
    url = _base(ui) + f"/api/decide/{session.request_id}"
    [view] = httpx.get(_base(ui) + "/api/pending", params={"token": ui.token}).json()
    assert view["choices"] == ["approve", "skip"] and view["target"]["x"] == 3e-3
    refused = httpx.post(url, params={"token": ui.token},
                         json={"decision": "rescan", "operator": "Ada"})
    assert refused.status_code == 422
    httpx.post(url, params={"token": ui.token}, json={"decision": "approve", "operator": "Ada"})
    assert session.resumed_with() == {"decision": "approve", "operator": "Ada", "note": ""}


def test_a_rescanned_frame_shows_its_previous_attempt(broker, ui) -> None:
    rescans = [{"reason": "low snr", "settings": {"dwell": 2e-6, "fov": 2e-5},
                "new_settings": {"dwell": 4e-6, "fov": 2e-5},
                "prediction": {"label": "Powder", "confidence": 0.31}}]
    broker.submit(_payload(rescans=rescans))
    [view] = httpx.get(_base(ui) + "/api/pending", params={"token": ui.token}).json()
    assert view["rescans"] == 1
    assert view["previous"] == {"reason": "low snr", "label": "Powder", "confidence": 0.31,
                                "changed": {"dwell": [2e-6, 4e-6]}}
