"""A damaged HDF5 file that loops the HDF5 library (`tests/data/session_zeroed_block.h5`: a
3-frame session file with 64 KiB zeroed, made by the fault campaign, seed 0, case 62; under
HDF5 2.0.0 reading one of its attributes never returns) is refused by every command that reads
a user's file with one error line, within the probe's time limit, its bytes unchanged."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from shadowing import shadowing_folder
from typer.testing import CliRunner

from instruments.session_file import hdf5_probe
from instruments.session_file.hdf5_probe import (
    MetadataNeverFinishes,
    ProbeFailed,
    check_metadata_finishes,
)
from workflows.cli.app import app

pytestmark = pytest.mark.slow

LOOPING = Path(__file__).parent / "data" / "session_zeroed_block.h5"
LIMIT_S = 3.0


@pytest.fixture()
def looping(tmp_path) -> Path:
    path = tmp_path / "damaged.h5"
    shutil.copy(LOOPING, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def good_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "ok"
        f.create_group("a/b").attrs["n"] = 3
        f["a/b/data"] = np.zeros(4)
    return path


def test_a_file_whose_metadata_never_finishes_is_refused_at_the_limit(looping):
    before = digest(looping)
    with pytest.raises(MetadataNeverFinishes,
                       match=f"did not finish reading the metadata .* within {LIMIT_S:.0f} s"):
        check_metadata_finishes(looping, limit_s=LIMIT_S)
    assert digest(looping) == before


def test_readable_and_unreadable_files_pass_the_probe(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5" * 100)
    for path in (good_file(tmp_path / "good.h5"), garbage, tmp_path / "missing.h5", tmp_path):
        check_metadata_finishes(path, limit_s=30)              # the readers report the rest


def test_packages_named_like_ours_in_the_working_directory_change_nothing(tmp_path, looping,
                                                                          monkeypatch):
    monkeypatch.chdir(shadowing_folder(tmp_path / "cwd"))
    check_metadata_finishes(good_file(tmp_path / "good.h5"), limit_s=30)
    with pytest.raises(MetadataNeverFinishes):
        check_metadata_finishes(looping, limit_s=LIMIT_S)


def test_a_probe_that_cannot_import_refuses_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hdf5_probe, "PROBE_MODULE", "instruments.session_file.no_such_probe")
    with pytest.raises(ProbeFailed, match="exited with code 1: .*No module named"):
        check_metadata_finishes(good_file(tmp_path / "good.h5"), limit_s=30)


@pytest.mark.parametrize("command", [
    ["inspect", "{file}"], ["inspect", "{file}", "--json"], ["export", "{file}", "{out}"],
    ["report", "{file}", "--out", "{out}"], ["replay", "{file}", "--state-dir", "{out}"],
    ["twin", "serve", "--protocol", "dtm", "--port", "0", "--data", "{file}"],
    ["run", "--out", "{file}", "--frames", "1", "--bank", "none", "--quiet", "--state-dir",
     "{out}"]])
def test_every_command_that_reads_a_file_refuses_it_in_one_line(looping, tmp_path,
                                                                  monkeypatch, command):
    monkeypatch.setattr(hdf5_probe, "BASE_LIMIT_S", LIMIT_S)
    before = digest(looping)
    args = [a.format(file=looping, out=tmp_path / "out") for a in command]
    result = CliRunner().invoke(app, args)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith(("error: cannot read", "error: cannot serve the twin",
                                 "error: session failed to start"))
    assert "damaged" in errors[0] or "did not finish" in errors[0]
    assert digest(looping) == before
