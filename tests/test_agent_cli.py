"""`micagent run` and `micagent replay` from the command line: the session id printed and
stored, the summary, a checkpoint for other classes refused with a recorded reason, and the
replay diff of old and new decisions."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cli_in_process import micagent_in_process
from plumbing_model import untrained

from instruments.session_file.reader import SessionReader
from models.classifier import Classifier
from twins.classes import SEM_CLASSES

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two random-weight checkpoints for the SEM classes and one for other classes."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, classes, seed in (("a", SEM_CLASSES, 0), ("b", SEM_CLASSES, 1),
                                ("other", ("cats", "dogs"), 2)):
        paths[name] = str(untrained(classes, seed).save(root / name))
    return paths


def json_line(stdout: str) -> dict:
    """The JSON object `--json` printed: the last line of stdout that is one. (Once in a few
    full-suite runs a stray 40-dash progress line was captured after it; its source is not
    found yet, so the test does not depend on being the very last line.)"""
    return json.loads(next(line for line in reversed(stdout.splitlines())
                           if line.startswith("{")))


def run_cli(*args: str):
    result = micagent_in_process(*args)
    return result, result.output


def test_run_prints_the_session_id_it_stores_and_a_summary_then_replay_diffs(
        tmp_path, checkpoints):
    out = tmp_path / "s.h5"
    result, output = run_cli("run", "--model", checkpoints["a"], "--bank", "none",
                             "--frames", "3", "--out", str(out), "--state-dir",
                             str(tmp_path / "state"), "--pixels", "128", "--confidence", "0",
                             "--quiet")
    assert result.exit_code == 0, output
    session_id = re.search(r"session (\S+) ->", output).group(1)
    with SessionReader(out) as reader:
        summary = reader.summary()
    assert summary["session_id"] == session_id and summary["frames"] == 3
    assert "accuracy (twin truth)" in output and "confident: 3" in output

    same, output = run_cli("replay", str(out), "--model", checkpoints["a"], "--json",
                           "--state-dir", str(tmp_path / "state"))
    assert same.exit_code == 0, output
    diff = json_line(same.stdout)
    assert diff["frames"] == 3 and diff["changed"] == 0       # same model, same decisions
    assert [r["frame_id"] for r in diff["rows"]] == summary["frame_ids"]

    other, output = run_cli("replay", str(out), "--model", checkpoints["b"], "--json",
                            "--state-dir", str(tmp_path / "state"))
    assert other.exit_code == 0, output
    diff = json_line(other.stdout)
    assert diff["frames"] == 3
    assert diff["accuracy"]["old"] is not None and diff["accuracy"]["new"] is not None
    rows = diff["rows"]
    assert diff["changed"] == sum((r["stored_label"], r["stored_route"]) != (r["new_label"],
                                                                             r["new_route"])
                                  for r in rows)
    with SessionReader(out) as reader:
        images = [frame.image for frame, _ in reader.frames()]
    expected = [p.label for p in Classifier.load(checkpoints["b"]).classify(images)]
    confident = [(r["new_label"], label) for r, label in zip(rows, expected, strict=True)
                 if r["new_route"] == "confident"]
    assert confident and all(new == label for new, label in confident)   # model b decided
    with SessionReader(out) as reader:          # the replayed file itself is untouched
        assert reader.summary()["frame_ids"] == summary["frame_ids"]


def test_a_checkpoint_for_other_classes_fails_the_start_and_says_why(tmp_path, checkpoints):
    out = tmp_path / "s.h5"
    result, output = run_cli("run", "--model", checkpoints["other"], "--bank", "none",
                             "--out", str(out), "--state-dir", str(tmp_path / "state"),
                             "--quiet")
    assert result.exit_code == 2
    assert "failed to start" in output
    with SessionReader(out) as reader:
        summary = reader.summary()
    assert summary["status"] == "failed" and summary["frames"] == 0
    assert "cannot use model" in summary["reason"]


def test_resume_of_an_unknown_session_is_a_clear_error(tmp_path):
    result, output = run_cli("run", "--resume", "no-such-id", "--state-dir", str(tmp_path))
    assert result.exit_code == 2 and "no session no-such-id" in output


def test_run_over_a_foreign_nsid_file_replays_its_frames_without_touching_it(
        tmp_path, checkpoints, shared_nsid_file):
    import hashlib
    import shutil

    source = tmp_path / "pto.h5"
    shutil.copyfile(shared_nsid_file, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "s.h5"
    result, output = run_cli("run", "--instrument", f"replay://{source}", "--model",
                             checkpoints["a"], "--bank", "none", "--frames", "10", "--out",
                             str(out), "--state-dir", str(tmp_path / "state"), "--quiet")
    assert result.exit_code == 0, output
    with SessionReader(out) as reader:
        summary, records = reader.summary(), reader.records()
    assert summary["status"] == "completed" and summary["frames"] == 4   # its 4 channels
    assert all(not r.rescans for r in records)          # stored frames cannot be rescanned
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest


def test_no_ood_switches_the_unknown_route_off_and_an_old_run_config_keeps_it_on(
        tmp_path, monkeypatch):
    from agent.config import RunConfig
    from workflows import session_assembly

    started = []

    def start(config, *args, **kw):
        started.append(config)
        raise session_assembly.StartError("not this time")

    monkeypatch.setattr(session_assembly, "run_session", start)   # run imports it when run
    for flag in ("--ood", "--no-ood"):
        result, output = run_cli("run", flag, "--state-dir", str(tmp_path), "--quiet")
        assert result.exit_code == 2 and "not this time" in output
    assert [c.policy().reject_unknown for c in started] == [True, False]
    saved = tmp_path / "old.json"
    started[1].save(saved)
    old = json.loads(saved.read_text())
    del old["reject_unknown"]                    # a run config saved before the option
    saved.write_text(json.dumps(old))
    assert RunConfig.load(saved).policy().reject_unknown is True
