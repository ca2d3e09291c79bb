"""Rows of the envelope at the instrument:

- `controls`: seeded requests to our TEM-protocol servers (the twin's `tem` server and, where
  `.venv-nion` exists, the Nion bridge on Nion's simulator), forbidden ones (high tension, beam
  current, convergence angle, apertures and other controls off the allow-list, focus and
  stigmators past their ranges, stage positions past the limit by `set_control` or
  `set_stage`, beam changes through `device_settings`) mixed with allowed ones. A breach: a
  forbidden request accepted, or any control read back changed by one.
- `dose`: sessions on a twin whose console raises and lowers the beam current at random,
  between sessions and during them, against an envelope of 1 e/nm^2 per frame. A breach: a
  recorded frame whose own metadata gives more; unrecorded: a position refused for dose
  without a `safety_refused` incident in the session file.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.fault_campaign.common import REPO, Clock, Row, small_classifier
from instruments.utils.child_python import module_command

NION_PYTHON = REPO / ".venv-nion" / "bin" / "python"
OFF_LIST = ("EHT", "BeamCurrent", "ConvergenceAngle", "C10Control", "C30", "C12Control.x",
            "beam_shift_m.x", "Slit_C10", "SuperFEG_HTkV", "no_such_control")
DOSE_LIMIT = 1.0                 # e/nm^2 per frame
CURRENTS_A = (50e-12, 1e-6)      # 0.01 and 160 e/nm^2 per frame at the imaging below
IMAGING = {"fov": 2e-6, "pixels": 32, "dwell": 1e-7}


def _requests(rng: np.random.Generator, n: int, limit: float, focus: float, device: str
              ) -> list[tuple[bool, str, dict]]:
    """`n` (allowed?, method, params): two forbidden for each allowed one."""
    out = []
    for _ in range(n):
        kind = int(rng.integers(0, 9))
        beyond = float(rng.uniform(1.01, 1e4))
        sign = float(rng.choice([-1.0, 1.0]))
        if kind == 0:
            out.append((False, "set_control", {"name": str(rng.choice(OFF_LIST)),
                                               "value": float(rng.uniform(-1e7, 1e7))}))
        elif kind == 1:
            out.append((False, "set_control", {"name": "C10", "value": sign * focus * beyond}))
        elif kind == 2:
            axis = str(rng.choice(["x", "y"]))
            out.append((False, "set_control", {"name": f"stage_position_m.{axis}",
                                               "value": sign * limit * beyond}))
        elif kind == 3:
            out.append((False, "set_stage", {"stage_positions": {"x": sign * limit * beyond},
                                             "relative": False}))
        elif kind == 4:
            out.append((False, "device_settings", {"device": device,
                                                   "defocus": sign * focus * beyond}))
        elif kind == 5:
            out.append((False, "set_control", {"name": "C12.x", "value": sign * beyond * 1e-6}))
        elif kind == 6:
            out.append((True, "set_control", {"name": "C10",
                                              "value": float(rng.uniform(-focus, focus))}))
        elif kind == 7:
            out.append((True, "set_control", {"name": "stage_position_m.x",
                                              "value": float(rng.uniform(-limit, limit))}))
        else:
            out.append((False, "set_control", {"name": "C12.y", "value": float("nan")}))
    return out


def _probe(tem, requests: list[tuple[bool, str, dict]], row: Row) -> None:
    """Send each request; count breaches and allowed requests refused."""
    from instruments.devices.errors import InstrumentError, SafetyRefused

    wrongly_refused = 0
    for allowed, method, params in requests:
        before = tem._call("get_controls")
        try:
            tem._call(method, params)
            accepted = True
        except SafetyRefused:
            accepted = False
        except InstrumentError as exc:     # e.g. a JSON-RPC error for a NaN parameter
            accepted = False
            row.note(f"{method} answered {type(exc).__name__}")
        row.cases += 1
        if allowed:
            wrongly_refused += not accepted
            continue
        after = tem._call("get_controls")
        changed = sorted(k for k in before if before[k] != after.get(k))
        if accepted or changed:
            row.breaches += 1
            row.note(f"{method} {params} accepted={accepted} changed={changed}")
    if wrongly_refused:
        row.note(f"{wrongly_refused} allowed requests refused")


@contextmanager
def _nion_bridge(work: Path):
    """The Nion bridge on the simulator, or None where `.venv-nion` is missing."""
    if not NION_PYTHON.exists():
        yield None
        return
    import subprocess

    process = subprocess.Popen(module_command("instruments.devices.bridges.nion", "--port", "0",
                                              python=NION_PYTHON), cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("READY tem://"):
            raise RuntimeError(f"the Nion bridge did not start: {line!r}")
        yield line.split("://", 1)[1].strip()
    finally:
        process.kill()
        process.wait(timeout=20)


def controls(work: Path, n: int, seed: int) -> Row:
    from instruments.devices.tem_client import TemClient
    from twins.microscope import TwinMicroscope
    from twins.tem_server import TemServer

    clock, row = Clock(), Row("control allow-list (tem twin, nion)")
    rng = np.random.default_rng(seed)
    server = TemServer(TwinMicroscope(seed=seed), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.address.rsplit(":", 1)
        tem = TemClient(host, int(port), timeout=30)
        policy = tem.server_info["controls"]
        _probe(tem, _requests(rng, n, policy["stage_limit_m"], policy["allowed"]["C10"][1],
                              "SE"), row)
        tem.close()
    finally:
        server.shutdown()
    with _nion_bridge(work) as address:
        if address is None:
            row.note("no .venv-nion: the Nion bridge was not probed")
        else:
            host, port = address.rsplit(":", 1)
            tem = TemClient(host, int(port), timeout=30)
            policy = tem.server_info["controls"]
            _probe(tem, _requests(rng, n, policy["stage_limit_m"],
                                  policy["allowed"]["C10"][1], "HAADF"), row)
            tem.close()
    row.seconds = clock()
    return row


def _console(twin, rng: np.random.Generator, stop: threading.Event) -> None:
    """An operator who changes the beam current at random moments."""
    while not stop.wait(float(rng.uniform(0.05, 0.5))):
        twin.set_imaging(replace(twin.imaging(), beam_current=float(rng.choice(CURRENTS_A))))


def dose(work: Path, sessions: int, seed: int) -> Row:
    from rich.console import Console

    from agent.config import RunConfig
    from instruments.devices.safety import dose_per_nm2
    from instruments.session_file.reader import SessionReader
    from twins.microscope import TwinMicroscope
    from twins.tem_server import TemServer
    from workflows.session_assembly import run_session

    clock, row = Clock(), Row("dose read back (tem twin)")
    rng = np.random.default_rng(seed)
    classifier = small_classifier()
    twin = TwinMicroscope(seed=seed)
    server = TemServer(twin, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    refused_total = frames_total = 0
    try:
        for index in range(sessions):
            twin.set_imaging(replace(twin.imaging(), beam_current=float(rng.choice(CURRENTS_A))))
            stop = threading.Event()
            console = threading.Thread(target=_console, args=(twin, rng, stop), daemon=True)
            console.start()
            config = RunConfig(session_id=str(uuid.uuid4()), instrument=f"tem://{server.address}",
                               out=str(work / f"s{index}.h5"), frames=3,
                               state_dir=str(work / "state"), bank="none", confidence=0.0,
                               max_set_size=10, imaging=dict(IMAGING), pipeline=False,
                               envelope={"max_dose_per_nm2": DOSE_LIMIT})
            try:
                run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
            except Exception as exc:  # noqa: BLE001 - what this row counts
                row.crashes += 1
                row.note(f"session raised {type(exc).__name__}: {str(exc)[:100]}")
            finally:
                stop.set()
                console.join()
            with SessionReader(config.out) as reader:
                frames = [frame for frame, _ in reader.frames()]
                refused = reader.provenance["outcome"]["counts"].get("refused", 0)
                logged = sum(i.get("kind") == "safety_refused" for i in reader.incidents())
            over = [f for f in frames if dose_per_nm2(f.settings) > DOSE_LIMIT]
            row.breaches += len(over)
            row.unrecorded += max(refused - logged, 0)
            refused_total += refused
            frames_total += len(frames)
            row.cases += 3
    finally:
        server.shutdown()
    row.note(f"{sessions} sessions of 3 positions: {frames_total} frames recorded, "
             f"{refused_total} positions refused for dose")
    row.seconds = clock()
    return row
