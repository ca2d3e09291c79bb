"""Screenshots of the web approval page and of the session report, from a real twin session.

Runs `micagent run --approve all --ui web` on the embedded twin, screenshots the page with the first
pending approval in headless Chromium, approves every request from the page (as an operator
would), writes `micagent report` for the finished session and screenshots it (full page).

    python -m benchmarks.screenshots --out /tmp/micagent-shots [--frames 16]
        [--objective hunt:Tips:3 --strategy overview]   # the page with its search map

Prints the paths of approval_page.png and report.png and the seconds each stage took.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

from instruments.utils.child_python import module_command
from twins.operator_browser import headless_chromium
from workflows.report.session_report import build_report

URL = re.compile(r"approval page: (http://127\.0\.0\.1:\d+/\?token=[\w-]+)")


def start_session(out: Path, frames: int, objective: str = "survey",
                  strategy: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start the web-approved run; return the process and the page's URL."""
    log = out / "run.log"
    chosen = ("--strategy", strategy) if strategy else ()
    command = module_command("workflows", "run", "--approve", "all", "--ui", "web",
                             "--frames", str(frames), "--objective", objective, *chosen,
                             "--out", str(out / "session.h5"), "--state-dir",
                             str(out / "state"), "--quiet")
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=out,
                                env={**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = URL.search(log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"micagent run ended before serving the page:\n{log.read_text()}")
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("no approval page within 300 s")


def full_page(driver, path: Path, width: int = 1400) -> None:
    """Screenshot the whole document once its images have loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(str(path))


def approve_all(driver, proc: subprocess.Popen, shot: Path) -> int:
    """Approve every request from the page until the session ends; screenshot the page at
    the first request that comes after a recorded frame (so progress is on it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "operator").send_keys("screenshot operator")
    done: set[str] = set()
    while proc.poll() is None:
        cards = driver.find_elements(By.CSS_SELECTOR, "section.approval")
        try:
            card = cards[0] if cards else None
            request_id = card.get_attribute("data-request-id") if card else None
            if card is None or request_id in done:
                time.sleep(0.3)
                continue
            if not shot.exists() and driver.find_element(By.ID, "progress").text:
                time.sleep(1.5)     # the first card after a recorded frame: progress shows
                driver.save_screenshot(str(shot))
            card.find_element(By.CSS_SELECTOR, "button.btn-approve").click()
            done.add(request_id)
        except StaleElementReferenceException:
            continue
    return len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/micagent-shots"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--objective", default="survey")
    parser.add_argument("--strategy", default=None)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc, url = start_session(out, args.frames, args.objective, args.strategy)
    t_page = time.perf_counter()
    try:
        with headless_chromium(1400, 1000) as driver:
            driver.get(url)
            approved = approve_all(driver, proc, out / "approval_page.png")
            t_run = time.perf_counter()
            page = build_report(out / "session.h5", out / "report")
            t_report = time.perf_counter()
            driver.get(page.as_uri())
            full_page(driver, out / "report.png")
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"session exit code {proc.wait()}, {approved} approvals from the page")
    print(f"page served after {t_page - t0:.1f} s; session done after {t_run - t0:.1f} s; "
          f"report written in {t_report - t_run:.1f} s")
    if not (out / "approval_page.png").exists():
        print("fewer than two frames needed approval: no page screenshot (try more --frames)")
    print(f"approval page screenshot: {out / 'approval_page.png'}")
    print(f"report screenshot:        {out / 'report.png'} (report at {page})")


if __name__ == "__main__":
    main()
