"""Browser tests skip, saying why, where the Debian chromium packages are missing; a CLI
session's approval page is found in its log."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from twins.operator_browser import CHROMEDRIVER, CHROMIUM

URL = re.compile(r"approval page: (http://127\.0\.0\.1:(\d+)/\?token=[\w-]{32,})")


def require_chromium() -> None:
    """Skip the calling test when the Debian chromium packages are not installed."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
                    "(apt-get install chromium chromium-driver)")


def wait_for_page_url(log: Path, proc: subprocess.Popen, timeout: float) -> re.Match:
    """The approval page's address (group 1) and port (group 2), once `proc` logs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = URL.search(log.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None, f"run ended early:\n{log.read_text()}"
        time.sleep(0.3)
    raise AssertionError(f"no approval page within {timeout} s:\n{log.read_text()}")
