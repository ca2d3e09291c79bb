"""Caches and derived files appear whole or not at all: a write cut short leaves the previous
file (or none) and no temporary behind; a cache that is unreadable anyway is rebuilt, with a
warning."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.adjudication.demonstrations import DemonstrationBank
from instruments.utils import atomic_file
from workflows.training.demonstration_bank import BankCacheWarning, cached_bank

ROOT = Path(__file__).resolve().parents[1]


class PixelStats:
    """Embeds by a few pixel statistics: enough for a bank, without loading a model."""

    class_names = ["Fibres", "Particles", "Tips"]
    checkpoint_sha256 = "c0ffee"

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, images) -> np.ndarray:
        self.embedded += len(images)
        return np.stack([[np.mean(im), np.std(im), np.max(im)] for im in images]).astype(
            np.float32)


@pytest.fixture
def small_bank(monkeypatch) -> None:
    """The twin's labelled renders replaced by 3 small labelled images (the cache is tested)."""
    def render(per_class: int, size: int, seed: int):
        rng = np.random.default_rng(seed)
        labels = [name for name in PixelStats.class_names for _ in range(per_class)]
        return [rng.random((32, 32), dtype=np.float32) for _ in labels], labels
    import twins.dataset
    monkeypatch.setattr(twins.dataset, "render_labelled_images", render)


def _bank_path(folder: Path) -> Path:
    key = hashlib.sha256(b"c0ffee|twin|1|0").hexdigest()[:16]
    return folder / f"bank-{key}.npz"


def test_a_bank_write_cut_short_leaves_no_file_and_no_temporary(tmp_path: Path, small_bank,
                                                                monkeypatch) -> None:
    real = np.savez_compressed

    def dies_half_way(file, **arrays):
        real(file, **arrays)
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) // 2)
        raise KeyboardInterrupt                      # the kill, after half the bytes

    monkeypatch.setattr(np, "savez_compressed", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cached_bank(PixelStats(), tmp_path, "twin", per_class=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "savez_compressed", real)
    bank = cached_bank(PixelStats(), tmp_path, "twin", per_class=1)
    assert len(bank) == 3 and [p.name for p in tmp_path.iterdir()] == [_bank_path(tmp_path).name]


def test_a_corrupt_bank_cache_is_rebuilt_with_a_warning(tmp_path: Path, small_bank) -> None:
    path = _bank_path(tmp_path)
    path.write_bytes(b"PK\x03\x04 half a zip file")
    classifier = PixelStats()
    with pytest.warns(BankCacheWarning, match="unreadable"):
        bank = cached_bank(classifier, tmp_path, "twin", per_class=1)
    assert classifier.embedded == 3 and len(bank) == 3
    assert len(DemonstrationBank.load(path)) == 3             # the rebuilt cache is whole
    again = PixelStats()
    cached_bank(again, tmp_path, "twin", per_class=1)
    assert again.embedded == 0                                 # and used from now on


def test_a_killed_writer_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "derived.json"
    atomic_file.write_text(target, "old")
    script = textwrap.dedent(f"""
        import os, sys
        from instruments.utils import atomic_file
        with atomic_file.atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as f:
                f.write("new, half written")
                f.flush()
                print("writing", flush=True)
                sys.stdin.readline()                 # killed here
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_text() == "old"
    atomic_file.write_text(target, "new")
    assert target.read_text() == "new"


def test_a_folder_is_replaced_whole(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    with atomic_file.atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_file.atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("failed half way")
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
    with atomic_file.atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in folder.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_written_text_passes_the_redaction_filter(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdefghijklmnop")
    atomic_file.write_text(tmp_path / "x.json", '{"echo": "Bearer sk-live-abcdefghijklmnop"}')
    assert "abcdefghijklmnop" not in (tmp_path / "x.json").read_text()
