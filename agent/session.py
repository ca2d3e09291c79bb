"""A session: session file, checkpointer, context, compiled graph and event stream put
together, run to its end (or resumed), with the file's closing status always written.

Each `run` is one run of the event stream (`agent.event_stream`): a start document (`resumed`
and the counts it resumes from), the frames, incidents and decisions of this run, and a stop
with the status the file closed with. The session file's incident log and the session log
(STATE_DIR/logs/SESSION_ID.log) are subscribers; callers add theirs with
`session.stream.subscribe`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.acquirer import Acquirer, TileSource
from agent.adjudication.cache import AnswerCache
from agent.adjudication.demonstrations import DemonstrationBank
from agent.adjudication.offline import OfflineKnnAdjudicator
from agent.adjudication.openai_vlm import OpenAIAdjudicator, VlmConfig
from agent.adjudication.reference import TrainingReference
from agent.adjudication.trust import AdjudicatorTrust
from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig, checkpoint_path, work_dir
from agent.context import SessionContext
from agent.driver import run_graph, thread_config
from agent.event_stream import EventStream
from agent.graph import compile_graph, open_checkpointer
from agent.nodes.finish import close_session, final_status
from agent.objectives import parse_objective
from agent.policy import RoutePolicy
from agent.recorder import Recorder, RecordingError
from agent.risk_policy import risk_policy
from agent.scratch import FrameScratch
from agent.state import AgentState, new_state
from agent.stream_subscribers import FileRecorder, SessionLog
from agent.survey_plan import SurveyPlan
from agent.targeting import resolve_strategy
from instruments.devices.safety import GuardedMicroscope
from instruments.session_file.writer import SessionWriter
from instruments.utils.disk_space import DiskFull, Reserve, is_disk_full
from instruments.utils.redaction import strip_userinfo


@dataclass
class SessionParts:
    """What the caller opened for the session."""

    microscope: GuardedMicroscope
    classifier: Any
    bank: DemonstrationBank | None = None
    survey_positions: list[dict[str, Any]] | None = None
    region: tuple[tuple[float, float], tuple[float, float]] | None = None
    tiles: TileSource | None = None
    hunt_start: tuple[float, float] = (0.0, 0.0)
    model_info: dict[str, Any] = field(default_factory=dict)
    # the model's training reference (offline adjudicator) and measured adjudicator accuracy;
    # trust None: no measurement applies (a classifier handed over in memory)
    reference: TrainingReference | None = None
    trust: AdjudicatorTrust | None = None


def make_adjudicator(config: RunConfig, cache_dir: Path,
                     reference: TrainingReference | None = None):
    """The offline adjudicator (on the model's training reference when it has one), or the
    OpenAI-compatible VLM (config from the environment) with it as fallback."""
    offline = OfflineKnnAdjudicator(reference)
    if config.adjudicator == "openai":
        vlm = VlmConfig.from_env(timeout_s=config.vlm_timeout_s)
        return OpenAIAdjudicator(vlm, AnswerCache(cache_dir), fallback=offline)
    return offline


def provenance(config: RunConfig, parts: SessionParts, adjudicator_name: str) -> dict[str, Any]:
    """Session-level provenance (never an API key)."""
    return {"session_id": config.session_id, "instrument": {
                "uri": config.instrument, "id": parts.microscope.instrument_id,
                "server": getattr(parts.microscope.inner, "server_info", None)},
            "model": {**parts.model_info,
                      "class_names": list(parts.classifier.class_names)},
            "policy": config.policy().as_dict(),
            "quality_thresholds": config.thresholds,
            "envelope": parts.microscope.envelope.as_dict(),
            "objective": config.objective, "budgets": config.budgets,
            "adjudicator": adjudicator_name,
            "adjudicator_trust": parts.trust.record if parts.trust is not None else None,
            "vlm_base_url": strip_userinfo(os.environ.get("MICAGENT_VLM_BASE_URL"))
            if config.adjudicator == "openai" else None,
            "demonstrations": {"k": config.demo_k, "strategy": config.demo_strategy,
                               "bank_size": len(parts.bank) if parts.bank else 0},
            "run_config": {k: v for k, v in config.as_dict().items() if k != "budgets"}}


def record_failed_start(config: RunConfig, reason: str,
                        extra: dict[str, Any] | None = None) -> None:
    """A session that could not start still leaves a closed file saying why (a run of its
    own in the event stream, with the incident)."""
    writer = SessionWriter(config.out, {"session_id": config.session_id,
                                        "instrument": {"uri": config.instrument},
                                        "objective": config.objective, **(extra or {})})
    stream = session_stream(config, writer)
    stream.start({"session_id": config.session_id, "resumed": False, "recorded": 0})
    stream.incident("start_failed", reason, source="agent")
    writer.close("failed", reason)
    stream.stop("failed", reason)


def session_stream(config: RunConfig, writer: SessionWriter) -> EventStream:
    """A stream read by the session file's incident log and the session log."""
    stream = EventStream()
    stream.subscribe(FileRecorder(writer))
    stream.subscribe(SessionLog(Path(config.state_dir) / "logs" / f"{config.session_id}.log"))
    return stream


class Session:
    def __init__(self, config: RunConfig, parts: SessionParts) -> None:
        self.config, self.parts = config, parts
        work = work_dir(config.out)
        (work / "thumbnails").mkdir(parents=True, exist_ok=True)
        adjudicator = make_adjudicator(config, Path(config.state_dir) / "vlm-cache",
                                       parts.reference)
        self.reserve = Reserve(work / "reserve")    # room to close the file on a full disk
        self.reserve.restore()
        policy, risk_note = self._policy(adjudicator.name)
        recorded = provenance(config, parts, adjudicator.name)
        if risk_note is not None:          # the policy in force, set by the target risk
            recorded.update(policy=policy.as_dict(), risk_control=risk_note)
        self.writer = SessionWriter(config.out, recorded)
        self.stream = session_stream(config, self.writer)
        parts.microscope.on_incident = self.stream.incident       # every fault, in the stream
        self.checkpointer = open_checkpointer(checkpoint_path(config.out))
        if parts.bank is not None:
            parts.bank.check_classes(parts.classifier.class_names)
        scratch = FrameScratch(work / "frames")
        self.recorder = Recorder(self.writer, scratch)
        self.recovered = self.recorder.recover()     # frames a killed run recorded, unstored
        self.context = SessionContext(
            acquirer=Acquirer(parts.microscope, parts.tiles, pipeline=config.pipeline),
            classifier=parts.classifier, writer=self.writer,
            adjudicator=adjudicator, bank=parts.bank, scratch=scratch, recorder=self.recorder,
            thumbnails=work / "thumbnails", plan=SurveyPlan(work / "plan.json"),
            policy=policy,
            thresholds=config.quality_thresholds(), imaging=config.imaging_settings(),
            survey_positions=parts.survey_positions, region=parts.region,
            demo_k=config.demo_k, demo_strategy=config.demo_strategy,
            autofocus=config.autofocus_settings(),
            rng=np.random.default_rng(config.seed), stream=self.stream,
            learner=parts.classifier if config.learn else None)
        self.graph = compile_graph(self.context, self.checkpointer)

    def _policy(self, adjudicator: str) -> tuple[RoutePolicy, dict[str, Any] | None]:
        """The configured policy, set by the target risk where there is one (with what was
        set); with the adjudicators the model's measurement trusts to overrule the classifier;
        without rescans where the instrument cannot image again (stored frames of a replay,
        windows of a fixed overview), without relooks where it cannot move its stage."""
        policy, note = self.config.policy(), None
        if self.config.target_risk is not None:
            policy, note = risk_policy(policy, getattr(self.parts.classifier, "risk", None),
                                       self.config.target_risk)
        if self.parts.trust is not None:
            policy = replace(policy, trusted_adjudicators=self.parts.trust.trusted(
                list(dict.fromkeys([adjudicator, OfflineKnnAdjudicator.name]))))
        caps = self.parts.microscope.capabilities()
        fixed = self.parts.tiles is not None or caps.replays_stored
        if fixed:
            policy = replace(policy, max_rescans=0, zoom_unsure=False, zoom_out=False)
        if fixed or not caps.can_move_stage:
            policy = replace(policy, relook=False)
        return policy, note

    def initial_state(self) -> AgentState:
        objective = parse_objective(self.config.objective, self.parts.classifier.class_names)
        objective["start"] = list(self.parts.hunt_start)
        objective["strategy"] = resolve_strategy(self.config.strategy, objective["kind"],
                                                 served_overview=self.parts.tiles is not None)
        return new_state(self.config.session_id, objective, self.config.frames,
                         self.config.budgets)

    def saved_state(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The checkpointed values and the tasks of the latest checkpoint: those still to
        run and those that finished and stored their writes before the process died
        (`StateSnapshot.next` leaves the latter out; the graph has not ended while any
        task is there)."""
        snapshot = self.graph.get_state(thread_config(self.config.session_id))
        return dict(snapshot.values or {}), tuple(task.name for task in snapshot.tasks)

    def run(self, broker: ApprovalBroker | None = None,
            on_step: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the session, or continue it from its checkpoint; returns the final state.

        A checkpoint with a step pending resumes exactly there (`invoke(None)`: LangGraph runs
        that step, or applies the writes it stored before the process died). A session that
        ended failed starts a new run on its thread from `connect` (counts and budgets as they
        were, the position in flight retried). Ctrl-C (and SIGTERM/SIGHUP, which the CLI
        turns into KeyboardInterrupt) closes the file as interrupted, a full disk as
        disk_full (DiskFull raised), any other failure as failed, then re-raises."""
        values, pending = self.saved_state()
        self.context.acquirer.restore(values)
        self.stream.start(self._start_metadata(values))
        if values and (stored := self.writer.overview()) is not None:
            # a resumed run's readers see the overview too, and the frames recorded before
            self.stream.overview(stored, visited=self.writer.records())
        if not values:
            payload: Any = self.initial_state()
        elif pending:
            payload = None
        elif values.get("status") == "failed":
            payload = self._reopen_input(values)
        else:                                       # completed before: nothing to do
            self._close_file(values)
            return values
        try:
            final = run_graph(self.graph, self.config.session_id, payload, broker, on_step,
                              stream=self.stream)
        except KeyboardInterrupt:
            self._abandon("interrupted", "stopped by the operator; continue with "
                          f"`micagent run --resume {self.config.session_id}`")
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise self._stop_disk_full(exc) from exc
            self._abandon("failed", f"{type(exc).__name__}: {exc}")
            raise
        self._close_file(final)
        return final

    def _start_metadata(self, values: dict[str, Any]) -> dict[str, Any]:
        """The start document: the session, and where a resumed run takes it up."""
        counts = values.get("counts", {})
        return {"session_id": self.config.session_id, "plan_name": "micagent_session",
                "instrument": self.parts.microscope.instrument_id,
                "objective": self.config.objective, "max_frames": self.config.frames,
                "resumed": bool(values), "recorded": counts.get("recorded", 0),
                "routes": counts.get("routes", {})}

    def _abandon(self, status: str, reason: str) -> None:
        """Close file and run after a failure or Ctrl-C, queued writes first."""
        self._settle()
        self.writer.close(status, reason)
        self.stream.stop(status, reason)

    def _stop_disk_full(self, exc: BaseException) -> DiskFull:
        """Close the file as disk_full, in the room the reserve gives back; the DiskFull to
        raise. The checkpoint still holds the step that stopped: `--resume` runs it again."""
        self._settle()
        self.reserve.release()
        first = " ".join(str(exc).split("\n")[0].split())[:300]
        reason = (f"{first}; free space, then continue with "
                  f"`micagent run --resume {self.config.session_id}`")
        try:
            self.writer.close("disk_full", reason)
            self.stream.stop("disk_full", reason)
        except Exception:  # noqa: BLE001 - the file keeps its last flushed state, readable
            pass
        return DiskFull(first)

    def _close_file(self, values: dict[str, Any]) -> None:
        """Close the file with the state's outcome unless `finish` already did (its stored
        writes were applied without running it again after a kill)."""
        if not self.writer.closed:
            close_session(self.context, values, final_status(values),
                          values.get("used", {}).get("wall_s", 0.0))
        self.stream.stop(final_status(values), values.get("reason", ""))

    @staticmethod
    def _reopen_input(values: dict[str, Any]) -> dict[str, Any]:
        """The input that starts a failed session's thread again: back to connecting, the
        plan going on from the position that was in flight."""
        plan_index = values["plan_index"] - (1 if values.get("current") else 0)
        return {"status": "running", "reason": "", "current": None, "embedding": None,
                "reference_id": None, "plan_index": max(plan_index, 0),
                "consecutive_errors": 0,
                "events": [{"kind": "resumed", "time": time.time(),
                            "message": f"resumed after: {values.get('reason')}"}]}

    def _settle(self) -> None:
        """Let queued frame writes finish before the file is closed (a failed write is
        already the reason the session stops)."""
        try:
            self.recorder.drain()
        except Exception:  # noqa: BLE001 - the caller records the original failure
            pass

    def close(self) -> None:
        self._settle()
        self.context.acquirer.close()
        try:
            self.recorder.close()
        except RecordingError:              # already the reason the session stopped
            pass
        if not self.writer.closed:
            self.writer.close("interrupted", "session object closed before the end")
        self.stream.stop("interrupted", "session object closed before the end")
        self.checkpointer.conn.close()
