"""A session put together from its configuration and run to its end: the instrument (guarded
by the safety envelope), the classifier (the bundled model unless one is named), the
demonstration bank and the plan inputs (`open_parts`), then the agent with its approval front
end and progress (`run_session`). The CLI, single-file and archive replay, tests and benchmarks
all start sessions here. The progress bar, the web page's progress and the terminal's notices
read the session's event stream (`ProgressView`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.adjudication.demonstrations import DemonstrationBank
from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig, registry_path
from agent.event_stream import LEFT, StreamReader
from agent.overview import OverviewTiles
from agent.session import Session, SessionParts, record_failed_start
from agent.terminal_approval import TerminalApprover
from instruments.devices.errors import InstrumentError
from instruments.devices.microscope import Microscope
from instruments.devices.safety import GuardedMicroscope, envelope_from_dict
from instruments.devices.uri import open_instrument
from instruments.session_file.layout import SessionFileError
from instruments.utils.library_log import log_library_noise
from workflows.terminal import notice

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "bundled" / "sem_twin"
_err = Console(stderr=True)


class StartError(RuntimeError):
    """The session cannot start (model, instrument, bank): recorded as failed."""


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
                         bank=None if config.learn else (bank_for or _bank)(config, classifier),
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
        self.progress.update(self.task, completed=data["recorded"],
                             description=f"{data['label']} ({data['route']})")
        if self.broker is not None:
            self.broker.update_progress(
                recorded=data["recorded"], routes=dict(self.routes), total=self.total,
                budgets_left={key.removeprefix(LEFT): value for key, value in data.items()
                              if key.startswith(LEFT)})
            notice(self.console, f"recorded {data['frame_id'][:8]}: {data['label']} "
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
        try:
            record_failed_start(config, str(exc))
        except SessionFileError:          # --out is not ours (or unusable): left untouched
            pass
        raise
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
            raise StartError(str(exc)) from exc
        notice(_err, f"approval page: {web.url}")
    elif broker is not None:
        frontend = TerminalApprover(broker, console).start()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console,
                        disable=quiet or broker is not None)
    try:
        session = Session(config, parts)
    except Exception as exc:  # noqa: BLE001 - e.g. the file is held by a running session
        parts.microscope.close()
        raise StartError(f"cannot open session {config.session_id} at {config.out}: "
                         f"{exc}") from exc
    session.stream.subscribe(ProgressView(progress, console, broker, config.frames))
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
            web.stop()
    return final


