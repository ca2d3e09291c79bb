"""What the session asks a human, and what the human answers: typed.

The graph's `interrupt` carries an `ApprovalRequest` (a `LabelRequest` for a frame's label, a
`MoveRequest` for a stage move outside the free zone); every front-end (terminal, web page)
answers with a `HumanDecision`, and `request.accept(decision)` is the one check that the answer
fits the question (a choice it offered; a relabel names one of its labels, or in a learning
session any new class name).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from instruments.session_file.decision_record import Decision, DecisionRecord, RescanChange
from instruments.session_file.text_fields import checked_text


class DecisionRefused(ValueError):
    """An answer that does not fit the request it answers (the request stays open)."""


class HumanDecision(BaseModel):
    """A human's answer: the decision, the label of a relabel, what a rescan should change
    (default: the agent's choice), who (not blank), and why."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    decision: Decision
    label: str | None = None
    rescan_change: RescanChange | None = None
    operator: str = "?"
    note: str = ""

    @model_validator(mode="after")
    def _change_only_for_a_rescan(self) -> HumanDecision:
        if self.rescan_change is not None and self.decision != Decision.RESCAN:
            raise ValueError("rescan_change is only for a rescan decision")
        return self

    @field_validator("operator", "label")
    @classmethod
    def _printable_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else checked_text(value, info.field_name)

    @field_validator("note")
    @classmethod
    def _printable_note(cls, value: str) -> str:
        return checked_text(value, "note", required=False)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str = ""
    reason: str = ""                  # why a human is asked
    proposal: str = ""                # what the agent proposes (a label, a move)
    on_approve: str = ""              # what "approve" will do
    choices: tuple[Decision, ...] = tuple(Decision)
    labels: tuple[str, ...] = ()      # the labels a relabel may give
    new_labels: bool = False          # a relabel may also name a new class (--learn)
    error: str = ""                   # why the previous answer was refused
    request_id: str | None = None     # set by the broker

    def accept(self, decision: Any) -> HumanDecision:
        """`decision` (a HumanDecision or its dict) checked against this request;
        DecisionRefused (a ValueError) says why it does not fit."""
        try:
            answer = HumanDecision.model_validate(decision)
        except ValidationError as exc:
            raise DecisionRefused(f"not a decision: {exc.errors()[0]['msg']} "
                                  f"({'.'.join(map(str, exc.errors()[0]['loc']))})") from exc
        if answer.decision not in self.choices:
            raise DecisionRefused(f"decision must be one of "
                                  f"{[choice.value for choice in self.choices]}")
        if answer.decision == Decision.RELABEL and not answer.label:
            raise DecisionRefused("relabel needs a label")
        if answer.decision == Decision.RELABEL and answer.label not in self.labels \
                and not self.new_labels:
            raise DecisionRefused(f"relabel needs a label from {list(self.labels)}")
        return answer


class LabelRequest(_Request):
    """A frame's label needs a human: its record (the evidence) and thumbnails (PNG paths)."""

    kind: Literal["label"] = "label"
    record: DecisionRecord
    thumbnail: str | None = None
    previous_thumbnail: str | None = None
    proposal_source: str = ""


class MoveRequest(_Request):
    """A stage move outside the free zone needs a human: the target (metres, degrees)."""

    kind: Literal["move"] = "move"
    target: dict[str, float]
    choices: tuple[Decision, ...] = (Decision.APPROVE, Decision.SKIP)


ApprovalRequest = Annotated[LabelRequest | MoveRequest, Field(discriminator="kind")]
_REQUEST: TypeAdapter[LabelRequest | MoveRequest] = TypeAdapter(ApprovalRequest)


def as_request(value: Any) -> LabelRequest | MoveRequest:
    """A request from an interrupt's value (typed, or its dict from a checkpoint)."""
    if isinstance(value, LabelRequest | MoveRequest):
        return value
    return _REQUEST.validate_python(value)
