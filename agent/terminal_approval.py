"""The terminal front-end of the ApprovalBroker: a thread that prompts (rich) for each
pending request and answers it with `broker.decide`."""

from __future__ import annotations

import getpass
import threading
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.prompt import Prompt
from rich.table import Table

from agent.approval_broker import ApprovalBroker
from agent.approval_request import (
    ApprovalRequest,
    DecisionRefused,
    HumanDecision,
    LabelRequest,
    MoveRequest,
)
from instruments.session_file.text_fields import checked_text
from instruments.utils.redaction import redact


def _plain(value: Any) -> str:
    """Text from outside (paths, a VLM's answer) made safe for markup, secrets masked."""
    return escape(redact(str(value)))


def _describe_frame(console: Console, request: LabelRequest) -> None:
    record = request.record
    table = Table(title=f"Frame {record.sequence} ({(record.frame_id or '')[:8]})")
    table.add_column("class")
    table.add_column("p", justify="right")
    for label, p in record.prediction.top_k if record.prediction else ():
        table.add_row(label, f"{p:.3f}")
    console.print(table)
    console.print(f"thumbnail: {_plain(request.thumbnail)}")
    adjudication = record.adjudication
    if adjudication and adjudication.answer:
        answer = adjudication.answer
        confidence = "?" if answer.confidence is None else f"{answer.confidence:.2f}"
        console.print(f"adjudicator ({_plain(adjudication.adjudicator)}): "
                      f"{_plain(answer.label)} ({confidence}) — {_plain(answer.rationale)}")


def describe(console: Console, request: ApprovalRequest) -> None:
    if isinstance(request, MoveRequest):
        console.print(f"[bold yellow]Approval needed:[/] {_plain(request.reason)}")
    else:
        _describe_frame(console, request)
    if request.error:
        console.print(f"[red]{_plain(request.error)}[/]")
    console.print(f"why: {_plain(request.reason)}")
    console.print(f"[bold]approve[/] will {_plain(request.on_approve)}")


def ask(console: Console, request: ApprovalRequest, operator: str,
        stream: TextIO | None = None) -> HumanDecision:
    """Prompt for one decision (answers read from `stream`, default the terminal)."""
    describe(console, request)
    choice = Prompt.ask("decision", choices=[c.value for c in request.choices],
                        default="approve", console=console, stream=stream)
    label = None
    if choice == "relabel" and request.new_labels:     # --learn: any name teaches a class
        console.print(f"known: {_plain(', '.join(request.labels))}")
        label = Prompt.ask("label (known or a new class name)", console=console, stream=stream)
    elif choice == "relabel":
        label = Prompt.ask("label", choices=list(request.labels), console=console,
                           stream=stream)
    while True:
        try:
            note = checked_text(Prompt.ask("note", default="", console=console, stream=stream),
                                "note", required=False)
            break
        except ValueError as exc:
            console.print(_plain(str(exc)))
    return HumanDecision(decision=choice, label=label, operator=operator, note=note)


class TerminalApprover:
    """Answers the broker's pending requests from the terminal until stopped."""

    def __init__(self, broker: ApprovalBroker, console: Console | None = None,
                 operator: str | None = None, stream: TextIO | None = None) -> None:
        self.broker, self.console, self.stream = broker, console or Console(), stream
        self.operator = operator or getpass.getuser()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="micagent-terminal-approval",
                                        daemon=True)

    def start(self) -> TerminalApprover:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for request in self.broker.pending():
                decision = ask(self.console, request, self.operator, self.stream)
                try:
                    self.broker.decide(request.request_id, decision)
                except KeyError:
                    continue                  # answered elsewhere (web page) meanwhile
                except DecisionRefused as exc:
                    self.console.print(f"[red]{_plain(exc)}[/]")
            self._stop.wait(0.1)
