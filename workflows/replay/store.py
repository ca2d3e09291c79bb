"""The results folder of an archive replay: Parquet datasets written incrementally, and the
summary computed from them.

    RESULTS/manifest.json        the model the results belong to (sha256, path, classes)
    RESULTS/frames/part-*.parquet    one row per replayed frame (the dataset users query)
    RESULTS/tasks/part-*.parquet     one row per finished task: status, error, timing, worker
    RESULTS/sessions/part-*.parquet  one row per input file per run (scan: id, frames, error)
    RESULTS/summary.json         per-class counts, changed-decision matrix, per-session status

A part file is written under a hidden name, fsynced and renamed (instruments/atomic_file), so
readers (and a resumed run) never see half a file. The frames dataset is the record of what is
done: a frame range is done when its rows are there, which is how a rerun skips work and why
no frame is ever written twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from instruments.session_file.decision_record import accuracy
from instruments.utils import atomic_file
from workflows.replay.decisions import change

FORMAT = "micagent-replay-results"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMMARY = "summary.json"

FRAME_SCHEMA = pa.schema([
    ("session_key", pa.string()), ("session_id", pa.string()), ("source", pa.string()),
    ("task_start", pa.int64()), ("task_stop", pa.int64()), ("frame_index", pa.int64()),
    ("frame_id", pa.string()), ("instrument", pa.string()),
    ("stored_label", pa.string()), ("stored_route", pa.string()),
    ("stored_confidence", pa.float64()), ("new_label", pa.string()),
    ("new_route", pa.string()), ("new_confidence", pa.float64()),
    ("top_k_labels", pa.list_(pa.string())), ("top_k_probs", pa.list_(pa.float64())),
    ("changed", pa.bool_()), ("truth", pa.string()), ("model_sha256", pa.string()),
    # added later: parts written before hold nulls here (the summary reads labels and routes)
    ("route_changed", pa.bool_())])
TASK_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("session_key", pa.string()), ("session_id", pa.string()),
    ("source", pa.string()), ("start", pa.int64()), ("stop", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("frames", pa.int64()),
    ("worker", pa.string()), ("started", pa.float64()), ("finished", pa.float64()),
    ("seconds", pa.float64()), ("worker_rss_mb", pa.float64()),
    ("worker_peak_rss_mb", pa.float64()),
    ("model_sha256", pa.string())])
SESSION_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("scanned", pa.float64()), ("session_key", pa.string()),
    ("session_id", pa.string()), ("source", pa.string()), ("frames", pa.int64()),
    ("instrument", pa.string()), ("error", pa.string()), ("duplicate_of", pa.string())])
SCHEMAS = {"frames": FRAME_SCHEMA, "tasks": TASK_SCHEMA, "sessions": SESSION_SCHEMA}


class ResultsFolderError(ValueError):
    """The output folder holds something else: another model's results, or not results."""


class ResultsFolder:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._seq = 0

    # --- the manifest ---------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        """The folder's manifest; None for a missing or empty folder."""
        path = self.root / MANIFEST
        if not path.exists():
            if self.root.is_dir() and any(self.root.iterdir()):
                raise ResultsFolderError(f"{self.root} is not empty and holds no replay results "
                                         f"({MANIFEST} missing); choose another --out")
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsFolderError(f"unreadable {path}: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise ResultsFolderError(f"{path} is not a micagent replay manifest")
        return manifest

    def check_model(self, sha256: str) -> None:
        """Refuse a folder that holds results of another model."""
        manifest = self.manifest()
        if manifest is not None and manifest.get("model_sha256") != sha256:
            raise ResultsFolderError(
                f"{self.root} holds results of another model ({manifest.get('model_path')}, "
                f"sha256 {str(manifest.get('model_sha256'))[:12]}), not of this one "
                f"(sha256 {sha256[:12]}); choose another --out")

    def create(self, sha256: str, model_path: str, class_names: list[str]) -> None:
        self.check_model(sha256)
        for kind in SCHEMAS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        if not (self.root / MANIFEST).exists():
            self._write_text(MANIFEST, json.dumps({
                "format": FORMAT, "format_version": FORMAT_VERSION, "model_sha256": sha256,
                "model_path": model_path, "class_names": list(class_names),
                "created": time.time()}, indent=1))

    # --- parts ----------------------------------------------------------------------------
    def _write_text(self, name: str, text: str) -> None:
        atomic_file.write_text(self.root / name, text)

    def append(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write `rows` as one new part of dataset `kind` (atomically)."""
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[kind])
        name = f"part-{self.run_id}-{self._seq:06d}.parquet"
        self._seq += 1
        with atomic_file.atomic_path(self.root / kind / name) as tmp:
            pq.write_table(table, tmp)

    def table(self, kind: str, columns: list[str] | None = None) -> pa.Table:
        """Dataset `kind` as one table (empty with its schema when nothing is there)."""
        folder = self.root / kind
        schema = SCHEMAS[kind]
        if not folder.is_dir():
            return schema.empty_table().select(columns or schema.names)
        return pads.dataset(folder, format="parquet", schema=schema).to_table(columns=columns)

    def done_ranges(self) -> dict[str, set[tuple[int, int]]]:
        """Session key -> the frame ranges whose rows are stored."""
        table = self.table("frames", ["session_key", "task_start", "task_stop"])
        done: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for key, start, stop in zip(*(table[c].to_pylist() for c in table.column_names),
                                    strict=True):
            done[key].add((start, stop))
        return done

    # --- the summary ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts, matrix, accuracy, throughput and per-session status of everything stored."""
        frames = self.table("frames").to_pylist()
        tasks = self.table("tasks").to_pylist()
        sessions = self.table("sessions").to_pylist()
        return build_summary(self.manifest() or {}, frames, tasks, sessions)

    def write_summary(self) -> dict[str, Any]:
        summary = self.summary()
        self._write_text(SUMMARY, json.dumps(summary, indent=1))
        return summary


def _session_status(sessions: list[dict], tasks: list[dict],
                    frames: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per session key: its latest scan, frames replayed and status; and the duplicates."""
    latest: dict[str, dict] = {}
    duplicates = []
    for row in sorted(sessions, key=lambda r: r["scanned"]):
        if row["duplicate_of"]:
            duplicates.append({"source": row["source"], "duplicate_of": row["duplicate_of"]})
        else:
            latest[row["session_key"]] = row
    replayed = Counter(r["session_key"] for r in frames)
    changed = Counter(r["session_key"] for r in frames if change(r) == "label")
    errors: dict[str, str] = {}
    for task in sorted(tasks, key=lambda t: t["finished"]):
        if task["status"] == "failed":
            errors[task["session_key"]] = task["error"]
    status = []
    for key, scan in latest.items():
        done = replayed[key]
        if scan["error"]:
            state, error = "failed", scan["error"]
        elif done >= scan["frames"]:
            state, error = ("done" if scan["frames"] else "empty"), None
        elif key in errors:
            state, error = "failed", errors[key]
        else:
            state, error = "pending", None
        status.append({"session_key": key, "session_id": scan["session_id"],
                       "source": scan["source"], "frames": scan["frames"], "replayed": done,
                       "changed": changed[key], "status": state, "error": error})
    return status, duplicates


def _throughput(tasks: list[dict]) -> dict[str, Any]:
    """Frames per second of the latest run (wall clock from its first start to last end)."""
    if not tasks:
        return {}
    run = max(tasks, key=lambda t: t["finished"])["run_id"]
    mine = [t for t in tasks if t["run_id"] == run]
    frames = sum(t["frames"] for t in mine)
    wall = max(t["finished"] for t in mine) - min(t["started"] for t in mine)
    per_worker: dict[str, dict[str, float]] = defaultdict(lambda: {"frames": 0, "seconds": 0.0})
    for t in mine:
        per_worker[t["worker"]]["frames"] += t["frames"]
        per_worker[t["worker"]]["seconds"] += t["seconds"]
    return {"run_id": run, "tasks": len(mine), "frames": frames, "wall_s": wall,
            "frames_per_s": frames / wall if wall > 0 else None,
            "workers": {w: {**v, "peak_rss_mb": max(t["worker_peak_rss_mb"] for t in mine
                                                    if t["worker"] == w)}
                        for w, v in per_worker.items()}}


def build_summary(manifest: dict[str, Any], frames: list[dict], tasks: list[dict],
                  sessions: list[dict]) -> dict[str, Any]:
    classes = list(manifest.get("class_names") or [])
    labels = sorted({r["stored_label"] or "none" for r in frames}
                    | {r["new_label"] or "none" for r in frames},
                    key=lambda x: (classes.index(x) if x in classes else len(classes), x))
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for r in frames:
        matrix[index[r["stored_label"] or "none"]][index[r["new_label"] or "none"]] += 1
    old = Counter(r["stored_label"] or "none" for r in frames)
    new = Counter(r["new_label"] or "none" for r in frames)
    truths = [r["truth"] for r in frames]
    old_accuracy, scored = accuracy([r["stored_label"] for r in frames], truths)
    new_accuracy, _ = accuracy([r["new_label"] for r in frames], truths)
    status, duplicates = _session_status(sessions, tasks, frames)
    return {
        "model": {k: manifest.get(k) for k in ("model_sha256", "model_path", "class_names")},
        "frames": len(frames), "changed": sum(1 for r in frames if change(r) == "label"),
        "route_changed": sum(1 for r in frames if change(r) == "route"),
        "sessions": dict(Counter(s["status"] for s in status)),
        "class_counts": {label: {"old": old[label], "new": new[label]} for label in labels},
        "route_counts": {"old": dict(Counter(r["stored_route"] for r in frames)),
                         "new": dict(Counter(r["new_route"] for r in frames))},
        "changed_matrix": {"labels": labels, "counts": matrix,
                           "rows": "stored label", "columns": "new label"},
        "accuracy": {"frames": scored, "old": old_accuracy, "new": new_accuracy}
        if scored else None,
        "throughput": _throughput(tasks),
        "session_status": status, "duplicates": duplicates,
    }
