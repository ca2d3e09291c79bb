"""Replay refuses clearly: a stored frame with a NaN pixel cannot be classified, so it is
counted and reported as refused (never as a changed decision, never in the accuracy) and the
exit status says so; in archive replay it fails only itself, and its session's other frames
get their rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_in_process import explain, micagent_in_process

from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.recorded_sessions import write_twin_session
from workflows.replay.task import replay_range, scan_session

FRAMES, BAD = 4, 1
NO_LABEL_ROUTES = ("unresolved", "quality_failed")   # an unsure frame may keep no label


def decided(row: dict) -> bool:
    """A good frame's row: replayed (not refused), with a label or a route saying why none."""
    return row["new_route"] != "refused" and bool(row["new_label"]
                                                  or row["new_route"] in NO_LABEL_ROUTES)


def test_single_file_replay_counts_a_nan_frame_as_refused(tmp_path: Path,
                                                         plumbing_checkpoint: Path):
    source = write_twin_session(tmp_path / "nan.h5", FRAMES, nan_frames=(BAD,))
    done = micagent_in_process("replay", str(source), "--json", "--model",
                               str(plumbing_checkpoint), "--state-dir", str(tmp_path / "state"))
    assert done.exit_code == 1, explain(done)
    diff = json.loads(done.stdout)
    assert diff["refused"] == 1
    refused = [row for row in diff["rows"] if row["new_route"] == "refused"]
    assert len(refused) == 1 and not refused[0]["changed"]
    assert all(decided(row) for row in diff["rows"] if row["new_route"] != "refused")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 4 frames" in errors[0] and "refused" in errors[0]


@pytest.mark.parametrize("bad_frames", [(BAD,), (0, 1, 2)], ids=["one", "three-in-a-row"])
def test_archive_replay_gives_the_good_frames_of_a_session_their_rows(
        tmp_path: Path, bad_frames, plumbing_checkpoint: Path):
    """Bad stored frames are data, not a broken instrument: each fails only itself, also
    several in a row (a live instrument's session stops after three)."""
    from models.classifier import Classifier

    source = write_twin_session(tmp_path / "nan.h5", FRAMES, nan_frames=bad_frames)
    classifier = Classifier.load(plumbing_checkpoint, class_names=list(SEM_CLASSES))
    rows = replay_range(scan_session(source), 0, FRAMES, classifier, lambda *_: None,
                        str(plumbing_checkpoint), tmp_path / "state", tmp_path / "scratch")
    with SessionReader(source) as reader:
        ids = [record.frame_id for record in reader.records()]
    assert [row["frame_id"] for row in rows] == ids
    for i, row in enumerate(rows):
        if i in bad_frames:
            assert (row["new_route"], row["new_label"], row["changed"]) == ("refused", None, False)
        else:
            assert decided(row)
