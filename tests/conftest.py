"""Test-wide settings: one torch thread (two threads on a busy 2-core box run 10-40x slower),
no hub access, and the shared real NSID sample."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

SHARED_NSID = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsid" / \
    "PTO_Funakubo0001.h5"


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture
def shared_nsid_file() -> Path:
    """The real NSID file from ../shared/data (read-only: copy before any r+ reader)."""
    if not SHARED_NSID.exists():
        pytest.skip(f"shared NSID sample not found at {SHARED_NSID}")
    return SHARED_NSID
