"""Row `instrument faults`: a long survey through the TEM twin server with seeded faults —
NaN, inf and wrong-shape frames (by acquisition), dropped connections and stalls past the
client's timeout (by server call), slow replies under it, and a stuck stage in a short session
of its own. A session that fails on a fault is resumed as a user would (`--resume`). Counted:
crashes (an exception out of the session other than its recorded failure), frames lost or
doubled (unique ids, unique contiguous sequence numbers, no position recorded twice), and
faults the session file's incident log does not name with their kind."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.fault_campaign.common import Clock, Row, small_classifier, twin_server

TIMEOUT_S = 1.0                 # the client's per-call timeout (URI ?timeout=)
STALL_S = 1.6                   # a stall past it
SLOW_S = 0.15                   # a slow reply under it
MAX_RESUMES = 1000


def plan_faults(n_faults: int, rng: np.random.Generator) -> tuple[str, dict[str, int], int]:
    """A fault spec of `n_faults` faults: 80 % bad frames in per-position patterns (one bad
    acquisition then a good retry, or two bad ones that skip the position; never three
    skipped positions in a row), 5 % drops, 5 % stalls, 10 % slow replies. Returns the spec,
    the count per kind and the number of survey positions that reaches every fault."""
    n_frame = int(round(n_faults * 0.8))
    n_drop = n_stall = int(round(n_faults * 0.05))
    n_slow = n_faults - n_frame - n_drop - n_stall
    items, counts = [], {"nan": 0, "inf": 0, "shape": 0, "drop": n_drop, "stall": n_stall,
                         "slow": n_slow}
    acquisition, positions, skipped_run, placed = 0, 0, 0, 0
    while placed < n_frame:
        positions += 1
        pattern = rng.choice(["clean", "retried", "skipped"], p=[0.25, 0.4, 0.35])
        if pattern == "skipped" and (skipped_run >= 2 or n_frame - placed < 2):
            pattern = "retried"
        bad = {"clean": 0, "retried": 1, "skipped": 2}[pattern]
        skipped_run = skipped_run + 1 if pattern == "skipped" else 0
        for _ in range(bad):
            acquisition += 1
            kind = str(rng.choice(["nan", "inf", "shape"]))
            counts[kind] += 1
            items.append(f"{kind}@{acquisition}")
            placed += 1
        if pattern != "skipped":
            acquisition += 1
    calls = rng.choice(np.arange(10, 2 * positions), size=n_drop + n_stall + n_slow,
                       replace=False)
    for i, call in enumerate(sorted(int(c) for c in calls)):
        if i < n_drop:
            items.append(f"drop@{call}")
        elif i < n_drop + n_stall:
            items.append(f"stall@{call}:{STALL_S}")
        else:
            items.append(f"stall@{call}:{SLOW_S}")
    return ",".join(items), counts, positions


def _session(work: Path, uri: str, frames: int, classifier, row: Row):
    """Run a survey to its end, resuming after every failure; the config and the number of
    resumes (None where a resume itself could not start)."""
    from agent.config import RunConfig
    from workflows.session_assembly import StartError, run_session

    config = RunConfig(session_id=str(uuid.uuid4()), instrument=uri,
                       out=str(work / "session.h5"), frames=frames,
                       state_dir=str(work / "state"), bank="none", confidence=0.0,
                       max_set_size=10, imaging={"fov": 2e-6, "pixels": 32, "dwell": 1e-7})
    config.budgets = {**config.budgets, "wall_s": 1e9}
    resumes = 0
    while resumes <= MAX_RESUMES:
        try:
            final = run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
        except StartError:                  # e.g. a drop during the reconnect: start again
            resumes += 1
            continue
        except Exception as exc:  # noqa: BLE001 - what this row counts
            row.crashes += 1
            row.note(f"session raised {type(exc).__name__}: {str(exc)[:100]}")
            resumes += 1
            continue
        if final.get("status") == "completed":
            return config, resumes
        resumes += 1
    row.note(f"not completed after {MAX_RESUMES} resumes")
    return config, resumes


def _account(path: str, row: Row) -> tuple[list[dict], int]:
    """Frame accounting; returns the session's incident log and the number of frames."""
    from instruments.session_file.reader import SessionReader

    with SessionReader(path) as reader:
        frames = [frame for frame, _ in reader.frames()]
        incidents = reader.incidents()
    ids = [f.frame_id for f in frames]
    sequences = sorted(f.sequence for f in frames)
    places = [(round(f.stage.x, 12), round(f.stage.y, 12)) for f in frames]
    row.doubled += (len(ids) - len(set(ids))) + (len(places) - len(set(places)))
    if sequences != list(range(len(sequences))):
        row.doubled += len(sequences) - len(set(sequences))
        row.lost += len(set(range(len(sequences))) - set(sequences))
        row.note(f"sequence numbers not 0..{len(sequences) - 1}")
    return incidents, len(frames)


KINDS = {"nan": ("nan_frame",), "inf": ("inf_frame",), "shape": ("wrong_shape",),
         "drop": ("disconnect",), "stall": ("timeout",)}
START_WORDS = {"drop": ("closed", "unreachable", "connection"), "stall": ("timeout", "no reply",
                                                                          "no answer")}


def _recorded(incidents: list[dict], kind: str) -> int:
    found = sum(i.get("kind") in KINDS[kind] for i in incidents)
    found += sum(i.get("kind") == "start_failed" and any(
        w in str(i.get("message", "")).lower() for w in START_WORDS.get(kind, ()))
        for i in incidents)
    return found


def run(work: Path, n_faults: int, seed: int) -> Row:
    clock, row = Clock(), Row("instrument faults (tem twin)")
    rng = np.random.default_rng(seed)
    spec, counts, positions = plan_faults(n_faults, rng)
    classifier = small_classifier()
    with twin_server("tem", work, faults=spec, seed=seed) as served:
        uri = f"tem://{served.host}:{served.port}?timeout={TIMEOUT_S}"
        config, resumes = _session(work, uri, positions, classifier, row)
        if not served.alive:
            row.crashes += 1
            row.note("the server process died")
    incidents, n_frames = _account(config.out, row)
    row.cases = sum(counts.values()) + 1
    missing = {}
    for kind in ("nan", "inf", "shape", "drop", "stall"):
        found = _recorded(incidents, kind)
        missing[kind] = max(counts[kind] - found, 0)
        if missing[kind] or found > counts[kind]:
            row.note(f"{kind}: {counts[kind]} injected, {found} in the session file")
    # A stalled acquire call runs on the server after the client timed out: a bad frame made
    # then never reaches the client, whose record of that call is the timeout (one each).
    hidden = sum(i.get("kind") == "timeout" and i.get("call") == "acquire" for i in incidents)
    frame_missing = missing["nan"] + missing["inf"] + missing["shape"]
    masked = min(frame_missing, hidden)
    if masked:
        row.note(f"{masked} bad frames were made in acquire calls that had timed out; the "
                 f"file records those calls' timeouts ({hidden} acquire timeouts)")
    row.unrecorded += frame_missing - masked + missing["drop"] + missing["stall"]
    slow = sum(i.get("kind") == "slow_frame" for i in incidents)
    row.note(f"{positions} positions, {n_frames} frames recorded, {resumes} resumes; "
             f"{counts['slow']} slow replies ({SLOW_S} s, under the {TIMEOUT_S} s timeout) "
             f"on random calls, {slow} of them on a frame (recorded as slow_frame)")
    row.unrecorded += _stuck_stage(work / "stuck", classifier, row)
    row.seconds = clock()
    return row


def _stuck_stage(work: Path, classifier, row: Row) -> int:
    """A short survey on a stage that ignores moves: 1 if the file does not say so."""
    work.mkdir()
    with twin_server("tem", work, faults="stuck") as served:
        config, _ = _session(work, f"tem://{served.host}:{served.port}?timeout=5", 4,
                             classifier, row)
    incidents, _ = _account(config.out, Row("stuck"))   # one place imaged 4 times: the fault
    said = any(i.get("kind") == "stage_not_reached" for i in incidents)
    if not said:
        row.note("stuck stage: 4 positions imaged at one place, no incident in the file")
    return 0 if said else 1
