"""End to end: `micagent run --approve uncertain --ui web` on the twin, approved from headless
Chromium; the session continues, the session file records who decided what, and the page ends
on the session's summary (not an unreachable server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from web_browser import require_chromium, wait_for_page_url

from instruments.session_file.reader import SessionReader
from twins.operator_browser import headless_chromium

pytestmark = pytest.mark.slow


def test_web_approval_of_a_twin_session(tmp_path: Path, plumbing_checkpoint: Path) -> None:
    require_chromium()
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    session_file = tmp_path / "web.h5"
    out_log, err_log = tmp_path / "stdout.log", tmp_path / "stderr.log"
    # --confidence 1.0: no frame is confident, so every frame reaches the approval page
    command = [sys.executable, "-c", "from workflows.cli.app import app; app()", "run",
               "--approve", "uncertain", "--ui", "web", "--frames", "2", "--confidence", "1.0",
               "--pixels", "128", "--model", str(plumbing_checkpoint), "--bank", "none",
               "--out", str(session_file), "--state-dir", str(tmp_path / "state"), "--quiet"]
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=tmp_path)
    try:
        found = wait_for_page_url(err_log, proc, timeout=240)
        url, port = found.group(1), found.group(2)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/api/pending").status_code == 401

        approved: list[str] = []
        with headless_chromium() as driver:
            wait = WebDriverWait(driver, 240,
                                 ignored_exceptions=[StaleElementReferenceException])
            driver.get(base + "/")
            assert "missing or wrong access token" in driver.page_source
            driver.get(url)
            driver.find_element(By.ID, "operator").send_keys("Ada")
            while proc.poll() is None and len(approved) < 10:
                try:
                    card = WebDriverWait(driver, 5).until(
                        ec.presence_of_element_located((By.CSS_SELECTOR, "section.approval")))
                except TimeoutException:  # no card yet: the session is working
                    continue
                try:
                    request_id = card.get_attribute("data-request-id")
                    if request_id in approved:
                        continue
                    assert card.find_elements(By.CSS_SELECTOR, "svg.topk rect")
                    card.find_element(By.CSS_SELECTOR, "button.btn-approve").click()
                except StaleElementReferenceException:  # the queue was redrawn meanwhile
                    continue
                approved.append(request_id)
                if len(approved) == 1:  # frame 1 recorded, frame 2 pending: live progress
                    progress = wait.until(lambda d: d.find_elements(
                        By.CSS_SELECTOR, '#progress [data-key="frames"]'))
                    assert "of 2" in progress[0].text
                wait.until(lambda d, rid=request_id: proc.poll() is not None or all(
                    c.get_attribute("data-request-id") != rid
                    for c in d.find_elements(By.CSS_SELECTOR, "section.approval")))
            assert proc.wait(timeout=240) == 0, err_log.read_text()
            final = wait.until(lambda d: d.find_elements(By.ID, "final"))[0].text
            status = driver.find_element(By.ID, "status").text
            header = driver.find_element(By.TAG_NAME, "header").text
            no_map = not driver.find_elements(By.ID, "search-map")   # a survey: no overview
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert len(approved) == 2, out_log.read_text()
    assert final.startswith("Session complete") and "frames recorded 2" in final
    assert "human decisions approve 2" in final and session_file.name in final
    assert "unreachable" not in status and "budget" not in header and "wall" not in header
    assert no_map
    with SessionReader(session_file) as reader:
        records = reader.records()
        assert reader.provenance["status"] == "completed"
    assert len(records) == 2
    for record in records:
        human = record.human
        assert human.operator == "Ada" and human.decision == "approve"
        assert human.label == human.proposal == record.label
        assert record.route == "human" and human.changed is False
