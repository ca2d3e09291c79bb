"""Archive replay on Dask distributed: a LocalCluster of two worker processes on loopback
replays a folder of session files into a Parquet results folder — every good frame exactly
once (also when a worker is SIGKILLed mid-task), the corrupt file reported, a rerun computes
nothing, the rows equal what `micagent replay FILE` decides, and no input byte changes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from distributed import Client, LocalCluster
from plumbing_model import untrained
from typer.testing import CliRunner

from twins.classes import SEM_CLASSES
from twins.recorded_sessions import write_twin_session
from workflows.cli.app import app
from workflows.replay.archive import ArchiveError, plan_ranges, replay_archive
from workflows.replay.store import ResultsFolder
from workflows.replay.task import short_key

pytestmark = pytest.mark.slow

FRAMES = {"a": 4, "b": 3, "c": 5, "d": 2, "e": 4}       # five good sessions, 18 frames
PER_TASK = 2                                            # sessions split into ranges of 2


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Five twin sessions, one truncated copy of a sixth (the corrupt input) and a damaged file
    whose metadata loops the HDF5 library (see tests/test_hdf5_probe.py)."""
    folder = tmp_path_factory.mktemp("archive")
    for seed, (name, frames) in enumerate(FRAMES.items()):
        write_twin_session(folder / f"{name}.h5", frames, seed=seed, pixels=96)
    whole = write_twin_session(folder / "whole.h5", 3, seed=9, pixels=96)
    (folder / "f_truncated.h5").write_bytes(whole.read_bytes()[:6000])
    whole.unlink()
    shutil.copy(Path(__file__).parent / "data" / "session_zeroed_block.h5", folder / "g_loops.h5")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The model every replay here uses: a plumbing model (tests/plumbing_model.py), since
    these tests are about the archive's bookkeeping, not about what the model decides."""
    return untrained(SEM_CLASSES).save(tmp_path_factory.mktemp("model") / "plumbing")


@pytest.fixture(scope="module")
def input_hashes(archive: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(archive.iterdir())}


@pytest.fixture(scope="module")
def client():
    os.environ["MICAGENT_HDF5_PROBE_LIMIT_S"] = "5"          # the workers inherit it
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as c:
            yield c
    finally:
        os.environ.pop("MICAGENT_HDF5_PROBE_LIMIT_S", None)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state")


def _kill_a_busy_worker(client: Client, running: threading.Thread) -> tuple[str, str]:
    """SIGKILL a worker process while it executes a replay task; (its address, the key)."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 240
    while running.is_alive() and time.monotonic() < deadline:
        executing = client.run(lambda dask_worker: [str(ts.key) for ts in
                                                    dask_worker.state.executing])
        for address, keys in executing.items():
            busy = [k for k in keys if k.startswith("replay-")]
            if busy:
                os.kill(pids[address], signal.SIGKILL)
                return address, busy[0]
        time.sleep(0.02)
    raise AssertionError("no replay task was seen executing")


@pytest.fixture(scope="module")
def replayed(archive, input_hashes, client, state_dir, model, tmp_path_factory):
    """The archive (and one of its files a second time) replayed while a worker is killed."""
    out = tmp_path_factory.mktemp("results") / "run"
    result: dict = {}

    def run() -> None:
        result["summary"] = replay_archive(client, [str(archive), str(archive / "b.h5")],
                                        model, out, state_dir=state_dir,
                                        frames_per_task=PER_TASK, quiet=True)

    thread = threading.Thread(target=run)
    thread.start()
    killed = _kill_a_busy_worker(client, thread)
    thread.join(timeout=600)
    assert not thread.is_alive() and "summary" in result
    return out, result["summary"], killed


def test_every_good_frame_is_stored_once_and_the_corrupt_file_is_reported(replayed,
                                                                          archive) -> None:
    out, summary, _ = replayed
    frames = ResultsFolder(out).table("frames").to_pylist()
    per_session = {}
    for row in frames:
        per_session.setdefault(Path(row["source"]).stem, []).append(row["frame_index"])
    assert {k: sorted(v) for k, v in per_session.items()} == {
        k: list(range(n)) for k, n in FRAMES.items()}
    assert len({(r["session_key"], r["frame_id"]) for r in frames}) == len(frames) == 18
    assert all(r["model_sha256"] == summary["model"]["model_sha256"] for r in frames)
    assert all(r["new_route"] and (r["new_label"] in SEM_CLASSES + ("unknown",) or (
        r["new_label"] is None and r["new_route"] in ("unresolved", "quality_failed")))
               for r in frames)
    assert all(len(r["top_k_labels"]) == len(r["top_k_probs"]) == 3 for r in frames)

    assert summary["frames"] == 18 and summary["sessions"] == {"done": 5, "failed": 2}
    failed = sorted((s for s in summary["session_status"] if s["status"] == "failed"),
                    key=lambda s: s["source"])
    assert [Path(s["source"]).name for s in failed] == ["f_truncated.h5", "g_loops.h5"]
    assert "SessionFileCorrupt" in failed[0]["error"]
    assert "MetadataNeverFinishes" in failed[1]["error"]
    assert summary["duplicates"] == [{"source": str(archive / "b.h5"),
                                      "duplicate_of": str(archive / "b.h5")}]
    counts = summary["class_counts"]
    assert sum(c["old"] for c in counts.values()) == sum(c["new"] for c in counts.values()) == 18
    matrix = summary["changed_matrix"]["counts"]
    assert sum(map(sum, matrix)) == 18
    assert json.loads((out / "summary.json").read_text()) == summary


def test_a_worker_killed_mid_task_loses_nothing_and_duplicates_nothing(replayed,
                                                                       client) -> None:
    out, summary, (killed_address, killed_key) = replayed
    tasks = ResultsFolder(out).table("tasks").to_pylist()
    assert all(t["status"] == "done" for t in tasks)
    _, session, start, stop = killed_key.split("-")
    rerun = [t for t in tasks if (short_key(t["session_key"]), t["start"], t["stop"])
             == (session, int(start), int(stop))]
    assert len(rerun) == 1 and killed_address not in rerun[0]["worker"]
    assert sum(t["frames"] for t in tasks) == 18                  # each range stored once
    client.wait_for_workers(2, timeout=120)                      # the nanny restarted it


def test_a_rerun_recomputes_nothing_and_a_partial_run_resumes(replayed, archive, client,
                                                              state_dir, model,
                                                              tmp_path) -> None:
    out, _, _ = replayed
    parts = sorted(p.name for p in (out / "frames").iterdir())
    again = replay_archive(client, [str(archive)], model, out, state_dir=state_dir,
                        frames_per_task=PER_TASK, quiet=True)
    assert sorted(p.name for p in (out / "frames").iterdir()) == parts
    assert again["frames"] == 18 and again["sessions"] == {"done": 5, "failed": 2}

    # a run that stopped after two sessions, resumed over all of them with another range size
    partial = tmp_path / "partial"
    replay_archive(client, [str(archive / "a.h5"), str(archive / "c.h5")], model,
                partial, state_dir=state_dir, frames_per_task=PER_TASK, quiet=True)
    first = {p.name for p in (partial / "frames").iterdir()}
    resumed = replay_archive(client, [str(archive)], model, partial, state_dir=state_dir,
                          frames_per_task=3, quiet=True)
    assert resumed["frames"] == 18
    rows = ResultsFolder(partial).table("frames").to_pylist()
    assert len({(r["session_key"], r["frame_id"]) for r in rows}) == 18
    assert {p.name for p in (partial / "frames").iterdir()} > first
    tasks = ResultsFolder(partial).table("tasks").to_pylist()
    latest = resumed["throughput"]["run_id"]
    assert sorted((Path(t["source"]).stem, t["start"], t["stop"]) for t in tasks
                  if t["run_id"] == latest) == [("b", 0, 3), ("d", 0, 2), ("e", 0, 3),
                                                ("e", 3, 4)]


def test_rows_equal_what_single_file_replay_decides(replayed, archive, state_dir,
                                                    model) -> None:
    out, _, _ = replayed
    result = CliRunner().invoke(app, ["replay", str(archive / "c.h5"), "--json",
                                      "--model", str(model), "--state-dir", str(state_dir)])
    assert result.exit_code == 0, result.output
    diff = json.loads(next(line for line in reversed(result.stdout.splitlines())
                           if line.startswith("{")))
    rows = sorted((r for r in ResultsFolder(out).table("frames").to_pylist()
                   if r["source"] == str(archive / "c.h5")), key=lambda r: r["frame_index"])
    assert set(diff["rows"][0]) <= set(rows[0])       # one replay row, the archive adds context
    same = ("frame_id", "stored_label", "stored_route", "stored_confidence", "new_label",
            "new_route", "top_k_labels", "changed", "truth")
    single = [tuple(r[key] for key in same) for r in diff["rows"]]
    assert [tuple(r[key] for key in same) for r in rows] == single
    assert len(single) == FRAMES["c"]


def test_input_files_are_never_modified(replayed, archive, input_hashes) -> None:
    assert {p.name: _sha256(p) for p in sorted(archive.iterdir())} == input_hashes


def test_the_archive_report_renders_the_summary(replayed, tmp_path) -> None:
    out, summary, _ = replayed
    result = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    for png in ("changed_per_class.png", "changed_matrix.png", "confidence_shift.png",
                "throughput.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000 and png in page
    assert "f_truncated.h5" in page and f"<td>{summary['changed']}</td>" in page


# --- refused before any work -----------------------------------------------------------------
@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sem": untrained(SEM_CLASSES, seed=1).save(root / "sem"),
            "cats": untrained(("cats", "dogs")).save(root / "cats")}


def test_a_folder_of_another_models_results_is_refused(replayed, archive, other_models,
                                                       client) -> None:
    out, _, _ = replayed
    parts = sorted(p.name for p in (out / "frames").iterdir())
    with pytest.raises(ArchiveError, match="holds results of another model"):
        replay_archive(client, [str(archive)], other_models["sem"], out, quiet=True)
    assert sorted(p.name for p in (out / "frames").iterdir()) == parts


def test_a_model_for_another_class_set_is_refused(archive, other_models, client,
                                                  tmp_path) -> None:
    with pytest.raises(ArchiveError, match=r"classes \['cats', 'dogs'\] are not those"):
        replay_archive(client, [str(archive)], other_models["cats"], tmp_path / "out",
                    quiet=True)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_error_line(archive, tmp_path) -> None:
    result = CliRunner().invoke(app, ["replay", str(archive), "--out", str(tmp_path / "out"),
                                      "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout",
                                      "2"])
    assert result.exit_code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
    assert not (tmp_path / "out").exists()


def test_inputs_that_name_nothing_and_folders_that_hold_other_things_are_refused(
        archive, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["replay", str(tmp_path / "nothing-*.h5"), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "no session files at" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    shutil.copy(archive / "d.h5", tmp_path / "d.h5")
    result = runner.invoke(app, ["replay", str(tmp_path / "d.h5"), "--out", str(busy),
                                 "--workers", "1"])
    assert result.exit_code == 2 and "holds no replay results" in result.output
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_ranges_cover_only_frames_not_yet_stored() -> None:
    assert plan_ranges(7, set(), 3) == [(0, 3), (3, 6), (6, 7)]
    assert plan_ranges(7, {(0, 2), (4, 6)}, 3) == [(2, 4), (6, 7)]
    assert plan_ranges(5, {(0, 5)}, 2) == []
    assert plan_ranges(0, set(), 4) == []


def test_the_command_starts_a_local_cluster_prints_its_dashboard_and_reports_failures(
        archive, state_dir, model, tmp_path) -> None:
    out = tmp_path / "results"
    foreign = tmp_path / "not_micagent.h5"                # HDF5, but no session in it
    with h5py.File(foreign, "w") as f:
        f["image"] = np.zeros((8, 8), dtype=np.float32)
    result = CliRunner().invoke(app, [
        "replay", str(archive / "d.h5"), str(archive / "f_truncated.h5"), str(foreign),
        "--out", str(out), "--workers", "1", "--model", str(model), "--state-dir",
        str(state_dir), "--json", "--quiet"])
    assert result.exit_code == 1, result.output          # two inputs failed, the rest done
    assert "local cluster: 1 worker processes; dashboard: http://127.0.0.1:" in result.output
    summary = json.loads(next(line for line in reversed(result.stdout.splitlines())
                              if line.startswith("{")))
    assert summary["frames"] == FRAMES["d"]
    assert summary["sessions"] == {"done": 1, "failed": 2}
    errors = {Path(s["source"]).name: s["error"] for s in summary["session_status"]
              if s["status"] == "failed"}
    assert "NotASessionFile" in errors["not_micagent.h5"]
    assert "SessionFileCorrupt" in errors["f_truncated.h5"]
