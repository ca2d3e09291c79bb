"""Browser tests skip, saying why, where the Debian chromium packages are missing."""

from __future__ import annotations

import pytest

from twins.operator_browser import CHROMEDRIVER, CHROMIUM


def require_chromium() -> None:
    """Skip the calling test when the Debian chromium packages are not installed."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
                    "(apt-get install chromium chromium-driver)")
