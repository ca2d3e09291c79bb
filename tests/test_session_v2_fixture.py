"""Sessions written before the relayout of the code (session file format 2, records of
version 2, checkpoints naming the record's old module) still read, replay and resume.

The fixture `tests/data/session_v2_interrupted` was written by the code of ba663fb: a 6-tile
survey on the twin (64 px, bundled model), stopped right after its third recorded frame.
Its folder is copied before use and its registry entry pointed at the copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instruments.session_file.reader import SessionReader, read_records
from workflows.cli.app import app

FIXTURE = Path(__file__).parent / "data" / "session_v2_interrupted"
SESSION_ID = "5e5510a0-f1c7-4e00-8000-000000000002"
runner = CliRunner()


@pytest.fixture
def old_session(tmp_path: Path) -> Path:
    folder = tmp_path / "v2"
    shutil.copytree(FIXTURE, folder)
    entry = folder / "state" / "sessions" / f"{SESSION_ID}.json"
    config = json.loads(entry.read_text())
    config.update(out=str(folder / "session.h5"), state_dir=str(folder / "state"))
    entry.write_text(json.dumps(config))
    return folder


def test_a_version_2_file_reads_with_its_three_frames_and_records(old_session):
    result = runner.invoke(app, ["inspect", str(old_session / "session.h5"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 3
    assert summary["session_id"] == SESSION_ID
    records = read_records(old_session / "session.h5")
    assert [r.sequence for r in records] == [0, 1, 2]
    assert all(r.label for r in records)


def test_a_version_2_file_replays_through_the_current_model(old_session):
    result = runner.invoke(app, ["replay", str(old_session / "session.h5"), "--json",
                                 "--state-dir", str(old_session / "state")])
    assert result.exit_code == 0, result.output
    diff = json.loads(result.stdout.strip().splitlines()[-1])
    assert diff["frames"] == 3
    assert all(row["new_label"] for row in diff["rows"])


def test_a_version_2_session_resumes_to_its_end_without_losing_or_repeating(old_session):
    result = runner.invoke(app, ["run", "--resume", SESSION_ID, "--quiet",
                                 "--state-dir", str(old_session / "state")])
    assert result.exit_code == 0, result.output
    with SessionReader(old_session / "session.h5") as reader:
        summary, records = reader.summary(), reader.records()
    assert summary["status"] == "completed"
    assert summary["frames"] == 6
    assert len(set(summary["frame_ids"])) == 6
    assert sorted(r.sequence for r in records) == list(range(6))
    assert len({(r.position.x, r.position.y) for r in records}) == 6
