"""A session put together from its configuration and run to its end: the instrument (guarded
by the safety envelope), the classifier (the bundled model unless one is named), the
demonstration bank and the plan inputs (`open_parts`), then the agent with its approval front
end and progress (`run_session`). The CLI, single-file and archive replay, tests and benchmarks
all start sessions here. The progress bar, the web page's progress and the terminal's notices
read the session's event stream (`ProgressView`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.adjudication.demonstrations import DemonstrationBank
from agent.adjudication.reference import ReferenceFileError, TrainingReference
from agent.adjudication.trust import AdjudicatorTrust, TrustError
from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig, registry_path
from agent.event_stream import StreamReader
from agent.objectives import ObjectiveError, parse_objective
from agent.overview import OverviewTiles
from agent.risk_policy import RiskPolicyError, risk_policy
from agent.session import Session, SessionParts, record_failed_start
from agent.start_footprint import StartFootprint
from agent.targeting import StrategyError, resolve_strategy
from agent.terminal_approval import TerminalApprover
from instruments.devices.errors import InstrumentError, SafetyRefused
from instruments.devices.frame import ImagingSettings
from instruments.devices.instrument_defaults import ImagingError, describe, resolve
from instruments.devices.microscope import Microscope
from instruments.devices.safety import GuardedMicroscope, check_settings, envelope_from_dict
from instruments.devices.uri import open_instrument
from instruments.session_file.layout import SessionFileError
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import refuse_foreign
from instruments.utils.library_log import log_library_noise
from workflows.terminal import notice

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "bundled" / "sem_twin"
_err = Console(stderr=True)


class StartError(RuntimeError):
    """The session cannot start (model, instrument, bank): recorded as failed."""


# --- checked before anything loads or is written -------------------------------------------
def declared_classes(config: RunConfig) -> list[str] | None:
    """The classes the session's classifier will know, read without loading it: the twin's,
    else those the checkpoint's config.json names (None where it cannot be read: loading the
    model then says why)."""
    if config.instrument == "twin":
        from twins.classes import SEM_CLASSES
        return list(SEM_CLASSES)
    path = Path(config.model) if config.model else BUNDLED_MODEL
    try:
        names = json.loads((path / "config.json").read_text("utf-8")).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return list(names) if isinstance(names, list) else None


def check_start(config: RunConfig) -> None:
    """What a new session can be refused for before the model loads or a file is written:
    its objective (and the classes it names) and its imaging settings inside the safety
    envelope. ObjectiveError or StartError."""
    objective = parse_objective(config.objective, declared_classes(config))
    strategy = resolve_strategy(config.strategy, objective["kind"])
    if objective["kind"] == "survey" and strategy != "grid":
        raise StrategyError(f"strategy {strategy!r}: a survey images its whole plan in grid "
                            "order; search strategies are for hunt:CLASS or explore")
    if config.instrument != "twin":
        return   # settings and ranges left open come from the instrument; the guard checks them
    given = {name: value for name, value in config.imaging.items() if value is not None}
    try:         # the embedded twin's defaults are the envelope's and ImagingSettings', known now
        check_settings(envelope_from_dict(config.envelope), ImagingSettings(**given))
    except SafetyRefused as exc:
        raise StartError(f"imaging settings: {exc} (change --fov/--dwell or the "
                         "envelope's limits)") from exc


# --- opening the parts ---------------------------------------------------------------------
def _twin_factory(seed: int):
    def make() -> Microscope:
        from twins.microscope import TwinMicroscope
        return TwinMicroscope(seed=seed)
    return make


def _load_learner(config: RunConfig):
    """--learn: a learner from nothing (`--model none`) or from a checkpoint's support set."""
    from agent.learning import SessionLearner
    try:
        if config.model == "none":
            return SessionLearner(seed=config.seed), "none"
        if not config.model:
            raise StartError("--learn starts from --model none or from a checkpoint written "
                             "by a learning session (OUT.model/) or by `micagent train "
                             "--profile fewshot`; the bundled model has no support set")
        return SessionLearner.from_checkpoint(config.model, config.seed), config.model
    except StartError:
        raise
    except Exception as exc:  # noqa: BLE001 - every load failure ends the start, recorded
        raise StartError(f"cannot learn from model {config.model}: {exc}") from exc


def _load_classifier(config: RunConfig, twin: bool):
    from models.classifier import Classifier
    if config.learn:
        return _load_learner(config)
    if config.model == "none":
        raise StartError("--model none starts from nothing: it needs --learn")
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
    from workflows.training.demonstration_bank import session_bank
    try:
        return session_bank(classifier, config.state_dir, config.bank, config.seed)
    except Exception as exc:  # noqa: BLE001
        raise StartError(f"cannot build the demonstration bank from "
                         f"{config.bank or 'twin'}: {exc}") from exc


def may_adjudicate(trust: AdjudicatorTrust | None) -> bool:
    """Whether a session may ask an adjudicator at all, and so needs demonstrations: no
    measurement applies (`trust` None, the policy routes alone), or the model's measurement
    trusts some adjudicator. Otherwise the twin bank (~20 s of rendering and embedding on a
    fresh state dir) is not built unless `--bank` names one."""
    return trust is None or bool(trust.trusted(list(trust.measured)))


def _adjudication(model_path: str, classifier: Any
                  ) -> tuple[TrainingReference | None, AdjudicatorTrust | None]:
    """The offline adjudicator's training reference and the measured adjudicator accuracy
    stored beside the checkpoint; neither for a classifier handed over in memory. Nothing is
    trusted where it was never measured, or measured on another state of the checkpoint
    (retrained, OOD refitted: rerun `micagent measure-adjudicators`)."""
    if not Path(model_path).is_dir():
        return None, None
    try:
        reference, trust = TrainingReference.load(model_path), AdjudicatorTrust.load(model_path)
    except (ReferenceFileError, TrustError) as exc:
        raise StartError(f"cannot use model {model_path}: {exc}") from exc
    sha = getattr(classifier, "checkpoint_sha256", None)
    if trust.record.get("checkpoint_sha256") != sha:
        return None, AdjudicatorTrust()
    return reference, trust


def _twin_positions(inner: Microscope, fov: float) -> list[dict[str, Any]] | None:
    specimen = getattr(inner, "specimen", None)
    if specimen is None:
        return None
    (x0, _), (y0, _) = specimen.extent
    return [{"x": p.x, "y": p.y, "row": int(round((p.y - y0 - fov / 2) / fov)),
             "col": int(round((p.x - x0 - fov / 2) / fov))}
            for p in specimen.survey_centres(fov)]


def _model(config: RunConfig, classifier: Any, twin: bool
           ) -> tuple[Any, str, TrainingReference | None, AdjudicatorTrust | None]:
    """The classifier (loaded unless given), where it came from, and its adjudication
    reference and trust; StartError where it cannot serve the session."""
    if classifier is None:
        classifier, model_path = _load_classifier(config, twin)
    else:
        model_path = config.model or "<in memory>"
    if config.target_risk is not None:      # the session's own check, before any file
        try:
            risk_policy(config.policy(), getattr(classifier, "risk", None), config.target_risk)
        except RiskPolicyError as exc:
            raise StartError(f"model {model_path}: {exc}") from exc
    return (classifier, model_path, *_adjudication(model_path, classifier))


def open_parts(config: RunConfig, classifier: Any = None, instrument: Microscope | None = None,
               bank_for: Callable[[RunConfig, Any], DemonstrationBank | None] | None = None
               ) -> SessionParts:
    """Instrument (guarded; opened from config.instrument unless given), classifier (loaded
    from config.model unless given), demonstration bank (`bank_for(config, classifier)` when
    given, else from the cache under config.state_dir; only where `may_adjudicate` or
    config.bank names one) and plan inputs for a session."""
    twin = config.instrument == "twin"
    try:   # first: an address that answers nothing is said in seconds, before the model loads
        inner = instrument or open_instrument(config.instrument,
                                              {"twin": _twin_factory(config.seed)})
    except InstrumentError as exc:
        raise StartError(f"cannot open instrument {config.instrument}: {exc}") from exc
    try:   # settings and envelope ranges the user left open: the instrument's
        config.imaging, config.envelope = resolve(inner.capabilities(), config.imaging,
                                                  config.envelope)
    except (InstrumentError, ImagingError) as exc:
        inner.close()
        raise StartError(f"instrument {config.instrument}: {exc}") from exc
    try:
        classifier, model_path, reference, trust = _model(config, classifier, twin)
    except StartError:
        inner.close()
        raise
    guarded = GuardedMicroscope(inner, envelope_from_dict(config.envelope))
    wants_bank = not config.learn and (config.bank is not None or may_adjudicate(trust))
    parts = SessionParts(microscope=guarded, classifier=classifier,
                         bank=(bank_for or _bank)(config, classifier) if wants_bank else None,
                         model_info={"path": model_path,
                                     "sha256": getattr(classifier, "checkpoint_sha256", None)},
                         reference=reference, trust=trust)
    try:
        caps = guarded.capabilities()
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

class ProgressView(StreamReader):
    """The frames of the event stream, shown: the progress bar, and with an approval front
    end the web page's progress and a terminal line per recorded frame."""

    def __init__(self, progress: Progress, console: Console, broker: ApprovalBroker | None,
                 total: int) -> None:
        super().__init__()
        self.progress, self.console, self.broker, self.total = progress, console, broker, total
        self.task = progress.add_task("frames", total=total)
        self.routes: dict[str, int] = {}

    def start(self, doc: dict[str, Any]) -> None:
        self.routes = dict(doc.get("routes", {}))
        self.progress.update(self.task, completed=doc.get("recorded", 0))

    def frame(self, data: dict[str, Any]) -> None:
        self.routes[data["route"]] = self.routes.get(data["route"], 0) + 1
        label = data["label"] or "no label"           # a frame a human skipped
        self.progress.update(self.task, completed=data["recorded"],
                             description=f"{label} ({data['route']})")
        if self.broker is not None:
            self.broker.update_progress(recorded=data["recorded"], routes=dict(self.routes),
                                        total=self.total)
            notice(self.console, f"recorded {data['frame_id'][:8]}: {label} "
                                 f"({data['route']})")


def _save_learned(config: RunConfig, learner, final: dict[str, Any]) -> None:
    """The learned head beside the session file (OUT.model/), usable with --model."""
    learner.sync(final.get("learning"))
    saved = learner.save(f"{config.out}.model", config.session_id)
    if saved is None:
        notice(_err, "no head to save: fewer than two classes were taught", "yellow")
    else:
        notice(_err, f"learned head ({learner.version} answers, {learner.counts()}) saved: "
                     f"{saved}; use it with --model {saved}")


def final_summary(path: str, final: dict[str, Any] | None) -> dict[str, Any]:
    """What the web page shows when the session has ended: its status and reason, frames,
    labels, routes, human decisions, accuracy where the truth is known, and the file."""
    status = (final or {}).get("status") or "interrupted"
    summary: dict[str, Any] = {"status": status, "reason": (final or {}).get("reason") or "",
                               "file": path}
    try:
        with SessionReader(path) as reader:
            tally = reader.summary()
    except (SessionFileError, OSError):
        return summary
    summary.update(session_id=tally["session_id"], frames=tally["frames"],
                   labels=tally["label_counts"], routes=tally["route_counts"],
                   human_decisions=tally["human_acts"])
    if tally["scored_frames"]:
        summary.update(accuracy=tally["accuracy"], scored_frames=tally["scored_frames"])
    return summary


def _failed_start(config: RunConfig, footprint: StartFootprint, error: StartError,
                  cause: BaseException | None = None) -> NoReturn:
    """End a start that failed: the session file says why (where it can be written: not a
    file another session holds, nor on a full disk), and whatever else the start created is
    removed (nothing to resume is kept); raise `error`."""
    try:
        record_failed_start(config, str(error))
        recorded = True
    except Exception:  # noqa: BLE001 - held by another session, not ours, or no room
        recorded = False
    footprint.clear(keep_out=recorded)
    raise error from (cause or error.__cause__)


def run_session(config: RunConfig, console: Console, quiet: bool = False,
                classifier: Any = None, ui: str = "terminal", host: str = "127.0.0.1",
                port: int = 0, allow_hosts: tuple[str, ...] = (),
                operator: str | None = None) -> dict[str, Any]:
    """Open everything, run (or resume) the session to its end; approvals are answered in
    the terminal (by `operator`, else asked once) or, with `ui="web"` (or a saved
    `approve="web"` of an older configuration), on the web page at host:port.
    Library warnings and prints go to STATE_DIR/logs/SESSION_ID.log, not the terminal."""
    footprint = StartFootprint(config)
    log_library_noise(Path(config.state_dir) / "logs" / f"{config.session_id}.log")
    given = dict(config.imaging), dict(config.envelope)
    try:        # another tool's file at --out is said at once, before anything loads
        refuse_foreign(config.out)
    except SessionFileError as exc:
        _failed_start(config, footprint, StartError(f"cannot open session {config.session_id}"
                                                    f" at {config.out}: {exc}"), exc)
    try:
        parts = open_parts(config, classifier)
    except StartError as exc:
        _failed_start(config, footprint, exc)
    try:                                  # classes a checkpoint's config.json did not name
        parse_objective(config.objective, parts.classifier.class_names)
    except ObjectiveError as exc:
        parts.microscope.close()
        _failed_start(config, footprint, StartError(str(exc)))
    config.save(registry_path(config.state_dir, config.session_id))   # as resolved: --resume
    notice(console, describe(config.imaging, config.envelope, *given))
    broker = ApprovalBroker() if config.approve != "none" else None
    frontend, web = None, None
    if broker is not None and (config.approve == "web" or ui == "web"):
        from workflows.web.approval import start_web_ui
        try:
            web = start_web_ui(broker, host=host, port=port,
                               class_names=parts.classifier.class_names,
                               allow_hosts=allow_hosts)
        except OSError as exc:
            parts.microscope.close()
            _failed_start(config, footprint, StartError(str(exc)), exc)
        notice(_err, f"approval page: {web.url}")
    elif broker is not None:
        frontend = TerminalApprover(broker, console, operator=operator).start()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console,
                        disable=quiet or broker is not None)
    try:
        session = Session(config, parts)
    except Exception as exc:  # noqa: BLE001 - e.g. the file is held by a running session
        parts.microscope.close()
        if frontend is not None:
            frontend.stop()
        if web is not None:
            web.close()
        _failed_start(config, footprint, StartError(f"cannot open session {config.session_id}"
                                                    f" at {config.out}: {exc}"), exc)
    session.stream.subscribe(ProgressView(progress, console, broker, config.frames))
    if web is not None:
        session.stream.subscribe(web.search_map)
    final = None
    try:
        with progress:
            final = session.run(broker=broker)
        if config.learn:
            _save_learned(config, session.context.learner, final)
    finally:
        session.close()
        parts.microscope.close()
        if frontend is not None:
            frontend.stop()
        if web is not None:
            broker.finish(final_summary(config.out, final))
            web.close()
    return final


