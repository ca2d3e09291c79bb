"""`micagent run` (an acquisition session driven by the agent) and the single-file form of
`micagent replay` (stored frames through the current model and policy, with a diff of old and
new decisions; the command itself lives in workflows/cmd_replay.py)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agent.adjudication.demonstrations import DemonstrationBank
from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig, registry_path
from agent.objectives import ObjectiveError
from agent.overview import OverviewTiles
from agent.session import Session, SessionParts, record_failed_start
from agent.survey_plan import PlanError
from agent.terminal_approval import TerminalApprover
from instruments.decision_record import DecisionRecord, accuracy
from instruments.errors import InstrumentError
from instruments.hdf5_probe import MetadataNeverFinishes, check_metadata_finishes
from instruments.library_log import log_library_noise
from instruments.microscope import Microscope
from instruments.safety import GuardedMicroscope, envelope_from_dict
from instruments.session_reader import SessionReader
from instruments.uri import open_instrument
from workflows.cli_output import DAMAGED, fail, file_error, notice
from workflows.envelope_options import envelope_values
from workflows.replay_config import replay_run_config

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "bundled" / "sem_twin"
err = Console(stderr=True)


class StartError(RuntimeError):
    """The session cannot start (model, instrument, bank): recorded as failed."""


# --- opening the parts ---------------------------------------------------------------------
def _twin_factory(seed: int):
    def make() -> Microscope:
        from twins.microscope import TwinMicroscope
        return TwinMicroscope(seed=seed)
    return make


def _load_classifier(config: RunConfig, twin: bool):
    from models.classifier import Classifier
    path = Path(config.model) if config.model else BUNDLED_MODEL
    class_names = None
    if twin:
        from twins.classes import SEM_CLASSES
        class_names = list(SEM_CLASSES)
    try:
        return Classifier.load(path, class_names=class_names), str(path)
    except Exception as exc:  # noqa: BLE001 - every load failure ends the start, recorded
        raise StartError(f"cannot use model {path}: {exc}") from exc


def _bank(config: RunConfig, classifier) -> DemonstrationBank | None:
    from workflows.demonstrations import session_bank
    try:
        return session_bank(classifier, config.state_dir, config.bank, config.seed)
    except Exception as exc:  # noqa: BLE001
        raise StartError(f"cannot build the demonstration bank from "
                         f"{config.bank or 'twin'}: {exc}") from exc


def _twin_positions(inner: Microscope, fov: float) -> list[dict[str, Any]] | None:
    specimen = getattr(inner, "specimen", None)
    if specimen is None:
        return None
    (x0, _), (y0, _) = specimen.extent
    return [{"x": p.x, "y": p.y, "row": int(round((p.y - y0 - fov / 2) / fov)),
             "col": int(round((p.x - x0 - fov / 2) / fov))}
            for p in specimen.survey_centres(fov)]


def open_parts(config: RunConfig, classifier: Any = None, instrument: Microscope | None = None,
               bank_for: Callable[[RunConfig, Any], DemonstrationBank | None] | None = None
               ) -> SessionParts:
    """Instrument (guarded; opened from config.instrument unless given), classifier (loaded
    from config.model unless given), demonstration bank (`bank_for(config, classifier)` when
    given, else from the cache under config.state_dir) and plan inputs for a session."""
    twin = config.instrument == "twin"
    if classifier is None:
        classifier, model_path = _load_classifier(config, twin)
    else:
        model_path = config.model or "<in memory>"
    try:
        inner = instrument or open_instrument(config.instrument,
                                              {"twin": _twin_factory(config.seed)})
    except InstrumentError as exc:
        raise StartError(f"cannot open instrument {config.instrument}: {exc}") from exc
    guarded = GuardedMicroscope(inner, envelope_from_dict(config.envelope))
    parts = SessionParts(microscope=guarded, classifier=classifier,
                         bank=(bank_for or _bank)(config, classifier),
                         model_info={"path": model_path,
                                     "sha256": getattr(classifier, "checkpoint_sha256", None)})
    try:
        caps = guarded.capabilities()
        if config.imaging.get("detector") is None:      # not chosen: the instrument's first
            config.imaging["detector"] = caps.detectors[0]
        status = guarded.status()
        if caps.replays_stored:
            parts.survey_positions = inner.stored_positions()
        elif caps.has_overview and not caps.can_move_stage:
            parts.tiles = OverviewTiles(guarded, tile_px=64)
        else:
            parts.survey_positions = _twin_positions(inner, config.imaging["fov"])
        parts.hunt_start = (status.stage.x, status.stage.y)
    except InstrumentError as exc:
        guarded.close()
        raise StartError(f"instrument {config.instrument}: {exc}") from exc
    return parts


# --- running --------------------------------------------------------------------------------
def _summary_table(path: str) -> Table:
    with SessionReader(path) as reader:
        summary = reader.summary()
    table = Table(title=f"session {summary['session_id']} — {summary['status']}")
    table.add_column("item")
    table.add_column("value")
    table.add_row("frames", str(summary["frames"]))
    table.add_row("reason", summary.get("reason") or "")
    table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in
                                      sorted(summary["label_counts"].items())))
    table.add_row("routes", ", ".join(f"{k}: {v}" for k, v in
                                      sorted(summary["route_counts"].items())))
    table.add_row("escalated", f"{summary['escalations']} "
                               f"({summary['escalation_counts']})")
    if summary["scored_frames"]:
        table.add_row("accuracy (twin truth)",
                      f"{summary['accuracy']:.3f} final, {summary['accuracy_classifier']:.3f} "
                      f"classifier alone, {summary['scored_frames']} frames")
    table.add_row("file", Text(path))
    return table


def run_session(config: RunConfig, console: Console, quiet: bool = False,
                classifier: Any = None, ui: str = "terminal", host: str = "127.0.0.1",
                port: int = 0, allow_hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    """Open everything, run (or resume) the session to its end; approvals are answered in
    the terminal or, with `ui="web"` (or `--approve web`), on the web page at host:port.
    Library warnings and prints go to STATE_DIR/logs/SESSION_ID.log, not the terminal."""
    config.save(registry_path(config.state_dir, config.session_id))
    log_library_noise(Path(config.state_dir) / "logs" / f"{config.session_id}.log")
    try:
        parts = open_parts(config, classifier)
    except StartError as exc:
        record_failed_start(config, str(exc))
        raise
    broker = ApprovalBroker() if config.approve != "none" else None
    frontend, web = None, None
    if broker is not None and (config.approve == "web" or ui == "web"):
        from workflows.web_approval import start_web_ui
        try:
            web = start_web_ui(broker, host=host, port=port,
                               class_names=parts.classifier.class_names,
                               allow_hosts=allow_hosts)
        except OSError as exc:
            parts.microscope.close()
            raise StartError(str(exc)) from exc
        notice(err, f"approval page: {web.url}")
    elif broker is not None:
        frontend = TerminalApprover(broker, console).start()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console,
                        disable=quiet or broker is not None)
    task = progress.add_task("frames", total=config.frames)

    def on_update(kind: str, info: dict[str, Any]) -> None:
        if kind == "recorded":
            progress.update(task, completed=info["counts"]["recorded"],
                            description=f"{info['label']} ({info['route']})")
            if broker is not None:
                broker.update_progress(recorded=info["counts"]["recorded"],
                                       routes=info["counts"].get("routes", {}),
                                       total=config.frames,
                                       budgets_left=info.get("budgets_left", {}))
                notice(console, f"recorded {info['frame_id'][:8]}: {info['label']} "
                                f"({info['route']})")

    try:
        session = Session(config, parts, on_update=on_update)
    except Exception as exc:  # noqa: BLE001 - e.g. the file is held by a running session
        parts.microscope.close()
        raise StartError(f"cannot open session {config.session_id} at {config.out}: "
                         f"{exc}") from exc
    parts.microscope.on_incident = session.writer.record_incident   # every fault, in the file
    try:
        with progress:
            final = session.run(broker=broker)
    finally:
        session.close()
        parts.microscope.close()
        if frontend is not None:
            frontend.stop()
        if web is not None:
            web.stop()
    return final


def _vlm_timeout(given: float | None) -> float:
    """--vlm-timeout, else $MICAGENT_VLM_TIMEOUT, else 30 s."""
    if given is not None:
        return given
    text = os.environ.get("MICAGENT_VLM_TIMEOUT", "30")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"MICAGENT_VLM_TIMEOUT must be a number of seconds, got {text!r}")\
            from None


def _config_from_args(**kw: Any) -> RunConfig:
    session_id = str(uuid.uuid4())
    out = kw.pop("out") or f"micagent-{session_id}.h5"
    imaging = {"fov": kw.pop("fov"), "pixels": kw.pop("pixels"), "dwell": kw.pop("dwell"),
               "detector": kw.pop("detector"), "defocus": 0.0, "beam_energy": 5e3,
               "beam_current": 100e-12}
    return RunConfig(session_id=session_id, out=str(Path(out).resolve()), imaging=imaging, **kw)


def run(
    instrument: str = typer.Option("twin", help="twin | dtm://H:P | tem://H:P | replay://F.h5"),
    objective: str = typer.Option("survey", help="survey | hunt:CLASS[,CLASS][:N]"),
    frames: int = typer.Option(36, help="survey: tiles to record; hunt: positions to visit"),
    approve: str = typer.Option("none", help="none | uncertain | all | web"),
    adjudicator: str = typer.Option("offline", help="offline | openai (MICAGENT_VLM_*)"),
    model: str | None = typer.Option(None, help="checkpoint folder (default: bundled)"),
    out: str | None = typer.Option(None, help="session file (default micagent-<id>.h5)"),
    resume: str | None = typer.Option(None, help="continue a killed or failed session (with "
                                                 "--instrument: at a new address)"),
    seed: int = typer.Option(0, help="twin seed and sampling seed"),
    state_dir: str = typer.Option(".micagent", help="run configs, caches, banks"),
    bank: str | None = typer.Option(None, help="demonstrations: twin | DATASET_DIR | none"),
    pixels: int = typer.Option(256, help="pixels per frame side"),
    fov: float = typer.Option(20e-6, help="field of view (m)"),
    dwell: float = typer.Option(2e-6, help="dwell time per pixel (s)"),
    detector: str | None = typer.Option(None, help="detector (default: the instrument's "
                                                   "first, e.g. SE on the twin)"),
    confidence: float = typer.Option(0.9, help="confident: top probability >= this and a "
                                          "conformal set of one class"),
    max_rescans: int = typer.Option(2, help="rescans per frame at most"),
    zoom_unsure: bool = typer.Option(False, help="rescan unsure frames once with a smaller "
                                                 "FOV before adjudicating them"),
    ood: bool = typer.Option(True, "--ood/--no-ood",
                             help="record frames the model's out-of-distribution test flags "
                                  "as unknown, never as a class (checkpoints without an OOD "
                                  "fit flag none)"),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline",
                                  help="survey: acquire the next tile while the current one "
                                       "is assessed, classified and recorded"),
    demo_k: int = typer.Option(8, help="demonstrations shown to the adjudicator"),
    demo_strategy: str = typer.Option("similar", help="similar (cosine of embeddings) | "
                                                      "random"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    ui: str = typer.Option("terminal", help="where approvals are answered: terminal | web"),
    host: str = typer.Option("127.0.0.1", help="web approval page: address to bind"),
    port: int = typer.Option(0, help="web approval page: port (0: a free one)"),
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="web approval page: a further name it answers to in the Host "
                             "header (besides the bound host, localhost, 127.0.0.1); "
                             "repeatable")] = None,
    envelope: str | None = typer.Option(None, help="safety envelope: JSON file of limits "
                                                  "(stage_x/y/z, tilt, fov, dwell: [min, "
                                                  "max]; max_dose_per_nm2, max_moves, "
                                                  "free_zone)"),
    limit: Annotated[list[str] | None, typer.Option(
        "--limit", help="one envelope limit, e.g. fov=10e-9:1e-6 or max_moves=200 "
                        "(repeatable; overrides --envelope)")] = None,
    free_zone: str | None = typer.Option(None, help="stage region X0:X1,Y0:Y1 (m) where moves "
                                                    "need no approval; outside it each move "
                                                    "waits for a recorded human approval"),
    vlm_timeout: float | None = typer.Option(None, "--vlm-timeout", min=0.1,
                                             help="seconds the VLM adjudicator waits per "
                                                  "request (default: config, "
                                                  "$MICAGENT_VLM_TIMEOUT or 30)"),
) -> None:
    """Run an acquisition session (no arguments: a survey on the embedded twin)."""
    console = Console()
    if ui not in ("terminal", "web"):
        raise fail(f"--ui must be terminal or web, got {ui!r}")
    try:
        if resume:
            path = registry_path(state_dir, resume)
            if not path.exists():
                raise fail(f"no session {resume} under {state_dir} (looked for {path})")
            config = RunConfig.load(path)
            if instrument != "twin":                 # e.g. the server came back elsewhere
                config.instrument = instrument
            if vlm_timeout is not None:
                config.vlm_timeout_s = vlm_timeout
        else:
            config = _config_from_args(
                instrument=instrument, objective=objective, frames=frames, approve=approve,
                adjudicator=adjudicator, model=model, out=out, seed=seed,
                state_dir=str(Path(state_dir).resolve()), bank=bank, pixels=pixels, fov=fov,
                dwell=dwell, detector=detector, confidence=confidence, max_rescans=max_rescans,
                zoom_unsure=zoom_unsure, reject_unknown=ood, pipeline=pipeline, demo_k=demo_k,
                demo_strategy=demo_strategy, vlm_timeout_s=_vlm_timeout(vlm_timeout),
                envelope=envelope_values(envelope, limit or [], free_zone))
    except ValueError as exc:
        raise fail(exc) from exc
    notice(console, f"session {config.session_id} -> {config.out}"
                    + (" (resumed)" if resume else ""))
    try:
        check_metadata_finishes(config.out)       # an existing file: this run appends to it
    except MetadataNeverFinishes as exc:
        raise fail(f"session failed to start: {exc}") from exc
    try:
        final = run_session(config, console, quiet, ui=ui, host=host, port=port,
                            allow_hosts=tuple(allow_host or ()))
    except (StartError, ObjectiveError) as exc:
        raise fail(f"session failed to start: {exc}") from exc
    except PlanError as exc:
        raise fail(f"session {config.session_id} cannot go on: {exc}", code=1) from exc
    except KeyboardInterrupt as exc:
        notice(err, f"interrupted; continue with: micagent run --resume "
                    f"{config.session_id} --state-dir {config.state_dir}", "yellow")
        raise typer.Exit(130) from exc
    console.print(_summary_table(config.out))
    if final.get("status") == "failed":
        raise fail(f"session failed: {final.get('reason')}", code=1)


# --- replay ---------------------------------------------------------------------------------
def decision_diff(old: list[DecisionRecord], new: list[DecisionRecord],
                  truths: list[dict[str, Any]]) -> dict[str, Any]:
    """Old vs new decisions per frame (matched by frame id), with accuracy where known."""
    new_by_id = {r.frame_id: r for r in new}
    rows, changed = [], 0
    for rec, truth in zip(old, truths, strict=True):
        again = new_by_id.get(rec.frame_id)
        row = {"frame_id": rec.frame_id, "old_label": rec.label, "old_route": _route(rec),
               "new_label": again.label if again else None,
               "new_route": _route(again), "truth": truth.get("label")}
        row["changed"] = (row["old_label"], row["old_route"]) != (row["new_label"],
                                                                  row["new_route"])
        changed += row["changed"]
        rows.append(row)
    truth_labels = [r["truth"] for r in rows]
    old_accuracy, scored = accuracy([r["old_label"] for r in rows], truth_labels)
    new_accuracy, _ = accuracy([r["new_label"] for r in rows], truth_labels)
    return {"frames": len(rows), "changed": changed, "rows": rows,
            "accuracy": {"old": old_accuracy, "new": new_accuracy} if scored else None}


def _route(record: DecisionRecord | None) -> str | None:
    return record.route.value if record and record.route else None


def replay_file(session_file: str, model: str | None, as_json: bool, state_dir: str) -> None:
    """`micagent replay FILE`: a stored session's frames through the current model and policy
    (unattended) in this process; prints what changed (workflows/cmd_replay.py dispatches)."""
    source = Path(session_file).resolve()
    try:
        check_metadata_finishes(source)
        with SessionReader(source) as reader:
            old, truths = reader.records(), reader.evaluations()
            stored = reader.provenance.get("run_config") or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's error
        raise fail(f"cannot read {session_file}: {exc}") from exc
    if not old:
        raise fail(f"{session_file} holds no frames to replay")
    replay_id = str(uuid.uuid4())
    out = Path(state_dir).resolve() / "replays" / f"{source.stem}.replay-{replay_id}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = replay_run_config(source, stored, len(old), model, Path(state_dir).resolve(), out,
                               replay_id)
    quiet_console = Console(quiet=True)
    try:
        run_session(config, quiet_console, quiet=True)
    except StartError as exc:
        raise fail(f"replay failed to start: {exc}") from exc
    except DAMAGED as exc:                  # frames damaged inside a readable file
        raise file_error(exc, session_file) from exc
    with SessionReader(out) as reader:
        new = reader.records()
    diff = decision_diff(old, new, truths)
    diff.update(source=str(source), replay_file=str(out))
    if as_json:
        sys.stdout.write(json.dumps(diff) + "\n")
        return
    table = Table(title=f"replay of {source.name}: {diff['changed']} of {diff['frames']} "
                        "decisions changed")
    for column in ("frame", "old", "new", "truth"):
        table.add_column(column)
    for row in diff["rows"]:
        if row["changed"]:
            table.add_row(row["frame_id"][:8], f"{row['old_label']} ({row['old_route']})",
                          f"{row['new_label']} ({row['new_route']})", str(row["truth"]))
    console = Console()
    console.print(table)
    if diff["accuracy"]:
        console.print(f"accuracy: old {diff['accuracy']['old']:.3f}, "
                      f"new {diff['accuracy']['new']:.3f}")
