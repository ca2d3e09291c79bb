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
from nsid_files import SHARED_NSID  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def feature_cache_folder(tmp_path_factory) -> Path:
    """Cached stem features go to a folder of this test session, not the user's cache."""
    folder = tmp_path_factory.mktemp("stem_features")
    os.environ["MICAGENT_FEATURE_CACHE"] = str(folder)
    return folder


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: a module of long real-process tests (kills and resumes, peers, "
                   "Chromium, Dask); such modules are collected first")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked slow first, the rest in their order. With `--dist loadfile` (and
    `--no-loadscope-reorder`, pyproject's addopts) an xdist worker takes the next file
    whenever it is free, so long files left to the end would keep one worker busy while the
    other idles; short files last fill the gaps."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture
def shared_nsid_file() -> Path:
    """The real NSID file from ../shared/data (read-only: copy before any r+ reader)."""
    if not SHARED_NSID.exists():
        pytest.skip(f"shared NSID sample not found at {SHARED_NSID}")
    return SHARED_NSID


@pytest.fixture
def scifi_read(tmp_path: Path):
    """read(path) -> what `SciFiReaders.NSIDReader(...).read()` returns for that file, read
    from a copy (the reader opens files r+ and keeps them open); readers close at teardown."""
    import contextlib
    import io
    import shutil

    import SciFiReaders

    readers = []

    def read(path: Path):
        copy = tmp_path / f"scifi_copy_{len(readers)}.h5"
        shutil.copy(path, copy)
        with contextlib.redirect_stdout(io.StringIO()):     # it prints what it finds
            readers.append(SciFiReaders.NSIDReader(str(copy)))
            return readers[-1].read()

    yield read
    for reader in readers:
        reader.close()


@pytest.fixture(scope="module")
def untrained_classifier():
    """The smallest ViT-only model with seeded random weights (tests/plumbing_model.py), one
    per test module: scores that differ from frame to frame, for tests about control flow,
    not accuracy."""
    from plumbing_model import untrained

    return untrained()


@pytest.fixture(scope="session")
def plumbing_checkpoint(tmp_path_factory) -> Path:
    """A saved plumbing model (tests/plumbing_model.py) for `micagent` subprocesses whose
    test is about control flow: `--model` it (with `--bank none`) instead of the bundled
    model, whose load and 1.3 s per frame are paid in every such process."""
    from plumbing_model import untrained

    return untrained().save(tmp_path_factory.mktemp("plumbing") / "model")
