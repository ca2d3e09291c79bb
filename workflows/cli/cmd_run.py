"""`micagent run`: an acquisition session driven by the agent (put together and run by
workflows/session_assembly.py). The session's modules are imported when it runs, not when
the command line is built, so `--help` answers at once; arguments, objective and envelope are
checked before the model loads or a file is written (`session_assembly.check_start`)."""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from workflows.cli.stop_signals import stop_signals
from workflows.terminal import fail, notice

err = Console(stderr=True)


# what an incident kind means, for the summary (the session log has each one)
INCIDENT_NOTES = {"slow_frame": "frames that took over twice their scan time to arrive (a "
                                "busy instrument, its link or, on a twin, the rendering); "
                                "each frame was kept"}


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counts.items())) or "none"


def _summary_table(path: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    from instruments.session_file.reader import SessionReader
    from workflows.report.hunt_cost import hunt_rows
    with SessionReader(path) as reader:
        summary = reader.summary()
        hunt = hunt_rows(reader.provenance.get("objective", ""), reader.records())
    table = Table(title=f"session {summary['session_id']} — {summary['status']}")
    table.add_column("item")
    table.add_column("value")
    table.add_row("frames", str(summary["frames"]))
    if summary.get("reason"):
        table.add_row("reason", Text(summary["reason"]))
    table.add_row("labels", Text(_counts(summary["label_counts"])))
    table.add_row("routes", _counts(summary["route_counts"]))
    table.add_row("escalated", f"{summary['escalations']} "
                               f"({_counts(summary['escalation_counts'])})")
    if summary["human_acts"]:
        table.add_row("human decisions", _counts(summary["human_acts"]))
    if summary["scored_frames"]:
        table.add_row("accuracy (twin truth)",
                      f"{summary['accuracy']:.3f} final, {summary['accuracy_classifier']:.3f} "
                      f"classifier alone, {summary['scored_frames']} frames")
    for kind, count in sorted(summary["incidents"].items()):
        note = INCIDENT_NOTES.get(kind)
        table.add_row(f"incidents: {kind}", f"{count}" + (f" ({note})" if note else ""))
    from workflows.report.risk_summary import risk_rows
    for item, value in risk_rows(summary):
        table.add_row(item, value)
    for item, value in hunt:
        table.add_row(item, value)
    table.add_row("file", Text(path))
    return table


def _check_approval_spelling(approve: str, ui: str) -> None:
    """One spelling: `--approve MODE [--ui terminal|web]`."""
    if ui not in ("terminal", "web"):
        raise fail(f"--ui must be terminal or web, got {ui!r}")
    if approve == "web":
        raise fail("--approve web is spelled --approve uncertain --ui web (or --approve all "
                   "--ui web)")


def _check_web_has_approvals(mode: str, ui: str, resume: str | None) -> None:
    """`--ui web` without approvals is an error, on a new session as on a resumed one (whose
    mode is the saved one, unless `--approve` names another)."""
    if ui == "web" and mode == "none":
        saved = f"session {resume} was saved with --approve none" if resume else \
            "--approve is none"
        raise fail(f"--ui web answers approvals, but {saved}: add --approve uncertain (a human "
                   "decides the unsure frames) or --approve all")


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


def _config_from_args(**kw: Any):
    from agent.config import RunConfig
    session_id = str(uuid.uuid4())
    out = kw.pop("out") or f"micagent-{session_id}.h5"
    imaging = {"fov": kw.pop("fov"), "pixels": kw.pop("pixels"), "dwell": kw.pop("dwell"),
               "detector": kw.pop("detector"), "defocus": 0.0, "beam_energy": 5e3,
               "beam_current": 100e-12}
    return RunConfig(session_id=session_id, out=str(Path(out).resolve()), imaging=imaging, **kw)


def run(
    instrument: str = typer.Option("twin", help="twin | dtm://H:P | tem://H:P | replay://F.h5"),
    objective: str = typer.Option("survey", help="survey | explore | hunt:CLASS[,CLASS][:N]"),
    strategy: str = typer.Option("", help="where to look next: grid | spiral | overview | "
                                          "active (default: grid for a survey, active for "
                                          "explore and a hunt, overview for a hunt where the "
                                          "instrument serves its overview, as dtm:// does)"),
    frames: int = typer.Option(36, help="survey: tiles to record; hunt: positions to visit"),
    approve: str = typer.Option("none", help="which frames a human decides: none | uncertain "
                                             "| all (answered where --ui says; with "
                                             "--resume: instead of the saved mode)"),
    adjudicator: str = typer.Option("offline", help="offline | openai (MICAGENT_VLM_*)"),
    model: str | None = typer.Option(None, help="checkpoint folder (default: bundled); none: "
                                                "start from nothing (with --learn)"),
    learn: bool = typer.Option(False, help="learn from every human answer (needs --approve): "
                                           "each refits the head; saved as OUT.model/"),
    learn_min: int = typer.Option(3, help="--learn: examples a class needs before the agent "
                                          "decides alone the frames it reads as that class"),
    out: str | None = typer.Option(None, help="session file (default micagent-<id>.h5)"),
    resume: str | None = typer.Option(None, help="continue a killed or failed session (with "
                                                 "--instrument: at a new address)"),
    seed: int = typer.Option(0, help="twin seed and sampling seed"),
    state_dir: str = typer.Option(".micagent", help="run configs, caches, banks"),
    bank: str | None = typer.Option(None, help="demonstrations: twin | DATASET_DIR | none"),
    pixels: int | None = typer.Option(None, help="pixels per frame side (default: 256, or "
                                                 "the instrument's nearest size)"),
    fov: float | None = typer.Option(None, help="field of view (m; default: 20e-6 where the "
                                                "instrument's ranges hold 10 such tiles "
                                                "across its stage, else the FOV that does)"),
    dwell: float | None = typer.Option(None, help="dwell time per pixel (s; default: 2e-6 "
                                                  "within the instrument's range)"),
    detector: str | None = typer.Option(None, help="detector (default: the instrument's "
                                                   "first, e.g. SE on the twin)"),
    confidence: float = typer.Option(0.9, help="confident: top probability >= this and a "
                                          "conformal set of one class"),
    max_rescans: int = typer.Option(2, help="rescans per frame at most"),
    autofocus: bool = typer.Option(False, "--autofocus/--no-autofocus",
                                   help="a focus search at a new position whose sharpness "
                                        "falls below what its class showed so far"),
    autofocus_every: int = typer.Option(0, min=0, help="with --autofocus: also every N stage "
                                                       "moves (0: on sharpness only)"),
    target_risk: float | None = typer.Option(
        None, help="share of decided frames that may be wrong, e.g. 0.01: the confidence "
                   "threshold and the escalations used come from the model's risk "
                   "calibration (overrides --confidence)"),
    zoom_unsure: bool = typer.Option(False, help="rescan unsure frames once with a smaller "
                                                 "FOV before adjudicating them"),
    zoom_out: bool = typer.Option(False, "--zoom-out/--no-zoom-out",
                                  help="image an unsure frame once more with a twice wider "
                                       "field at the same centre and pool both predictions"),
    relook: bool = typer.Option(True, "--relook/--no-relook",
                                help="image a frame read below 0.7 four more times at its own "
                                     "field, the centre shifted a quarter field along each "
                                     "diagonal, and average the looks' predictions with its "
                                     "own (needs a stage; off under --target-risk)"),
    neighbourhood: bool | None = typer.Option(
        None, "--neighbourhood/--no-neighbourhood",
        help="pool an unsure frame's prediction with the sure frames of its region (stage "
             "distance, embedding); with --learn, record a frame under the label the human "
             "gave its region's frames [default: on with --learn, off otherwise]",
        show_default=False),
    unsure_label: str = typer.Option(
        "classifier", help="an unsure frame nothing settled (route unresolved, not decided): "
                           "recorded under the classifier's label, or none"),
    unsure_views: int = typer.Option(
        8, help="an unsure frame is classified again on this many rotations and mirror "
                "images of itself, probabilities averaged (1: off; ignored with --learn)"),
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
    ui: str = typer.Option("terminal", help="where approvals are answered: terminal | web "
                                            "(the approval page); needs --approve uncertain "
                                            "or all, given or saved: --ui web alone is an "
                                            "error"),
    operator: str | None = typer.Option(None, help="who answers the terminal's approvals, "
                                                   "stored with each decision (default: "
                                                   "asked once at the first approval)"),
    host: str = typer.Option("127.0.0.1", help="web approval page: address to bind"),
    port: int = typer.Option(0, help="web approval page: port (0: a free one)"),
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="web approval page: a further name it answers to in the Host "
                             "header (besides the bound host, localhost, 127.0.0.1); "
                             "repeatable")] = None,
    envelope: str | None = typer.Option(None, help="safety envelope: JSON file of limits "
                                                  "(stage_x/y/z, tilt, fov, dwell: [min, "
                                                  "max]; max_dose_per_nm2 (one frame), "
                                                  "max_dose_per_nm2_total (any area, over "
                                                  "the session), max_moves, free_zone); "
                                                  "ranges default to the instrument's and "
                                                  "can only narrow them"),
    limit: Annotated[list[str] | None, typer.Option(
        "--limit", help="one envelope limit, e.g. fov=10e-9:1e-6, max_moves=200 or "
                        "max_dose_per_nm2_total=1e7 (e/nm^2 any area may receive in the "
                        "session: rescans, autofocus frames, overlaps; repeatable; overrides "
                        "--envelope)")] = None,
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
    _check_approval_spelling(approve, ui)
    if not resume:
        _check_web_has_approvals(approve, ui, None)
    from agent.config import RunConfig, checkpoint_path, registry_path, work_dir
    from agent.objectives import ObjectiveError
    from agent.survey_plan import PlanError
    from instruments.session_file.hdf5_probe import ProbeRefused, check_metadata_finishes
    from instruments.utils.disk_space import is_disk_full
    from workflows.cli.envelope_options import envelope_values
    from workflows.session_assembly import StartError, check_start, run_session
    try:
        if resume:
            path = registry_path(state_dir, resume)
            if not path.exists():
                raise fail(f"no session {resume} under {state_dir} (looked for {path})")
            config = RunConfig.load(path)
            if not any(p.exists() for p in (Path(config.out), checkpoint_path(config.out),
                                            work_dir(config.out))):
                raise fail(f"session {resume} cannot resume: its file {config.out}, "
                           "checkpoint and work folder are gone (start a new session)")
            if instrument != "twin":                 # e.g. the server came back elsewhere
                config.instrument = instrument
            if approve != "none":                    # e.g. resumed with the approval page
                config = dataclasses.replace(config, approve=approve)
            _check_web_has_approvals(config.approve_mode, ui, resume)
            if vlm_timeout is not None:
                config.vlm_timeout_s = vlm_timeout
        else:
            config = _config_from_args(
                instrument=instrument, objective=objective, strategy=strategy, frames=frames,
                approve=approve,
                adjudicator=adjudicator, model=model, out=out, seed=seed,
                state_dir=str(Path(state_dir).resolve()), bank=bank, pixels=pixels, fov=fov,
                dwell=dwell, detector=detector, confidence=confidence, max_rescans=max_rescans,
                target_risk=target_risk, autofocus=autofocus,
                autofocus_every=autofocus_every,
                zoom_unsure=zoom_unsure, zoom_out=zoom_out, relook=relook,
                neighbourhood=neighbourhood,
                unsure_label=unsure_label, unsure_views=unsure_views, reject_unknown=ood,
                pipeline=pipeline, demo_k=demo_k,
                demo_strategy=demo_strategy, vlm_timeout_s=_vlm_timeout(vlm_timeout),
                envelope=envelope_values(envelope, limit or [], free_zone), learn=learn,
                learn_min=learn_min)
            check_start(config)                  # before the model loads, nothing written
    except (ValueError, StartError) as exc:
        raise fail(exc) from exc
    notice(console, f"session {config.session_id} -> {config.out}"
                    + (" (resumed)" if resume else ""))
    try:
        check_metadata_finishes(config.out)       # an existing file: this run appends to it
    except ProbeRefused as exc:
        raise fail(f"session failed to start: {exc}") from exc
    resume_hint = f"micagent run --resume {config.session_id} --state-dir {config.state_dir}"
    try:
        with stop_signals():
            final = run_session(config, console, quiet, ui=ui, host=host, port=port,
                                allow_hosts=tuple(allow_host or ()), operator=operator)
    except KeyboardInterrupt as exc:
        notice(err, f"interrupted; continue with: {resume_hint}", "yellow")
        raise typer.Exit(128 + getattr(exc, "signum", signal.SIGINT)) from exc
    except Exception as exc:
        if isinstance(exc, (StartError, ObjectiveError)):   # nothing kept but the file
            again = f"continue with: {resume_hint}" if resume else "start again"
            room = f"; free space, then {again}" if is_disk_full(exc) else ""
            raise fail(f"session failed to start: {exc}{room}") from exc
        if is_disk_full(exc):                     # stopped before a frame, file closed
            first = str(exc).split("\n")[0]
            raise fail(f"session {config.session_id} stopped, disk_full: {first}; free "
                       f"space, then continue with: {resume_hint}", code=1) from exc
        if isinstance(exc, PlanError):
            raise fail(f"session {config.session_id} cannot go on: {exc}", code=1) from exc
        raise
    console.print(_summary_table(config.out))
    if final.get("status") == "failed":
        raise fail(f"session failed: {final.get('reason')}", code=1)


