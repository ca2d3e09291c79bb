"""The terminal front-end of the ApprovalBroker: a thread that prompts (rich) for each
pending request and answers it with `broker.decide`.

The frame is shown inline where the terminal speaks a graphics protocol (sixel, kitty's:
textual-image asks the terminal), elsewhere as a block-character preview drawn by rich.
Decisions, labels and rescan changes are typed in any case, or by a unique prefix. The
operator's name is asked once per session unless given (`micagent run --operator`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.prompt import Prompt
from rich.table import Table
from rich.text import Text

from agent.approval_broker import ApprovalBroker
from agent.approval_request import (
    ApprovalRequest,
    DecisionRefused,
    HumanDecision,
    LabelRequest,
    MoveRequest,
)
from instruments.session_file.decision_record import RescanChange
from instruments.session_file.text_fields import checked_text
from instruments.utils.redaction import redact

PREVIEW_CELLS = 32                 # the frame's width on the terminal, in character cells
# (its height is half as many rows: a cell is about twice as tall as wide, frames are square)
RESCAN_CHANGES = {RescanChange.AUTO: "the agent's choice", RescanChange.DWELL: "longer dwell",
                  RescanChange.FOCUS: "refocus", RescanChange.ZOOM: "zoom in"}


def _plain(value: Any) -> str:
    """Text from outside (paths, a VLM's answer) made safe for markup, secrets masked."""
    return escape(redact(str(value)))


def complete(text: str, options: Sequence[str]) -> str:
    """The option `text` names: itself in any case, or a unique prefix of it in any case;
    ValueError says which options it could be."""
    wanted = text.strip().casefold()
    exact = [option for option in options if option.casefold() == wanted]
    if exact:
        return exact[0]
    matches = [option for option in options if wanted and option.casefold().startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"'{text.strip()}' could be {', '.join(matches)}: type more of it")
    raise ValueError(f"'{text.strip()}' is not one of {', '.join(options)}")


def _choose(console: Console, prompt: str, options: Sequence[str], default: str | None,
            stream: TextIO | None) -> str:
    """One of `options`, asked until the answer names one (see `complete`)."""
    while True:
        answer = Prompt.ask(f"{prompt} ({' / '.join(options)})", console=console,
                            stream=stream, **({} if default is None else {"default": default}))
        try:
            return complete(answer or "", options)
        except ValueError as exc:
            console.print(f"[red]{_plain(exc)}[/]")


def _graphics():
    """The renderable class that draws an image inline on this terminal (textual-image asks
    the terminal which protocol it speaks once, on import; block characters elsewhere)."""
    from textual_image.renderable import Image
    return Image


def frame_preview(path: str | None, inline: bool = False) -> Any:
    """The frame at `path` as a rich renderable: inline graphics where the terminal supports
    them (`inline`), else a block-character preview; None without a readable image."""
    if not path or not Path(path).is_file():
        return None
    from textual_image.renderable import HalfcellImage
    try:
        return (_graphics() if inline else HalfcellImage)(path, width=PREVIEW_CELLS,
                                                          height=PREVIEW_CELLS // 2)
    except OSError:
        return None


def _describe_frame(console: Console, request: LabelRequest, inline: bool = False) -> None:
    record = request.record
    table = Table(title=f"Frame {record.sequence} ({(record.frame_id or '')[:8]})")
    table.add_column("class")
    table.add_column("p", justify="right")
    for label, p in record.prediction.top_k if record.prediction else ():
        table.add_row(label, f"{p:.3f}")
    preview = frame_preview(request.thumbnail, inline)
    console.print(table if preview is None else Columns([preview, table]))
    if request.thumbnail:
        console.print(Text(f"frame image: {redact(request.thumbnail)}"), soft_wrap=True)
    adjudication = record.adjudication
    if adjudication and adjudication.answer:
        answer = adjudication.answer
        confidence = "?" if answer.confidence is None else f"{answer.confidence:.2f}"
        console.print(f"adjudicator ({_plain(adjudication.adjudicator)}): "
                      f"{_plain(answer.label)} ({confidence}) — {_plain(answer.rationale)}")


def describe(console: Console, request: ApprovalRequest, inline: bool = False) -> None:
    if isinstance(request, MoveRequest):
        console.print(f"[bold yellow]Approval needed:[/] {_plain(request.reason)}")
    else:
        _describe_frame(console, request, inline)
    if request.error:
        console.print(f"[red]{_plain(request.error)}[/]")
    console.print(f"why: {_plain(request.reason)}")
    console.print(f"[bold]approve[/] will {_plain(request.on_approve)}")


def ask(console: Console, request: ApprovalRequest, operator: str,
        stream: TextIO | None = None, inline: bool = False) -> HumanDecision:
    """Prompt for one decision (answers read from `stream`, default the terminal)."""
    describe(console, request, inline)
    choice = _choose(console, "decision", [c.value for c in request.choices], "approve",
                     stream)
    label, change = None, None
    if choice == "relabel" and request.new_labels:     # --learn: any name teaches a class
        console.print(f"known: {_plain(', '.join(request.labels))}")
        label = Prompt.ask("label (known or a new class name)", console=console, stream=stream)
    elif choice == "relabel":
        label = _choose(console, "label", list(request.labels), None, stream)
    if choice == "rescan":
        console.print("rescan changes: " + ", ".join(f"{key} = {text}"
                                                     for key, text in RESCAN_CHANGES.items()))
        change = _choose(console, "change", list(RESCAN_CHANGES), RescanChange.AUTO.value,
                         stream)
    while True:
        try:
            note = checked_text(Prompt.ask("note (optional)", default="", show_default=False,
                                           console=console, stream=stream),
                                "note", required=False)
            break
        except ValueError as exc:
            console.print(_plain(str(exc)))
    return HumanDecision(decision=choice, label=label, rescan_change=change,
                         operator=operator, note=note)


def ask_operator(console: Console, stream: TextIO | None = None) -> str:
    """The operator's name, asked once per session (not blank, printable)."""
    while True:
        try:
            return checked_text(Prompt.ask("operator name (stored with each decision)",
                                           console=console, stream=stream) or "", "operator")
        except ValueError as exc:
            console.print(f"[red]{_plain(exc)}[/]")


class TerminalApprover:
    """Answers the broker's pending requests from the terminal until stopped."""

    def __init__(self, broker: ApprovalBroker, console: Console | None = None,
                 operator: str | None = None, stream: TextIO | None = None) -> None:
        self.broker, self.console, self.stream = broker, console or Console(), stream
        self.operator = operator
        self.inline = self.console.is_terminal and stream is None
        if self.inline:
            _graphics()               # asks the terminal now, before any prompt reads it
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
                if self.operator is None:
                    self.operator = ask_operator(self.console, self.stream)
                decision = ask(self.console, request, self.operator, self.stream, self.inline)
                try:
                    self.broker.decide(request.request_id, decision)
                except KeyError:
                    continue                  # answered elsewhere (web page) meanwhile
                except DecisionRefused as exc:
                    self.console.print(f"[red]{_plain(exc)}[/]")
            self._stop.wait(0.1)
