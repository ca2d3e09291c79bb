"""What every adjudicator takes and returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

ABSTAIN = "none"
"""The label of an adjudicator's "none of these / unsure": it gives the frame no class."""


class AnswerError(ValueError):
    """An adjudicator's answer that cannot be used (malformed, refused, label not allowed)."""


@dataclass(frozen=True)
class Answer:
    label: str          # a class name, or ABSTAIN
    confidence: float
    rationale: str

    @property
    def abstained(self) -> bool:
        return self.label == ABSTAIN

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    """One adjudication: who answered, with which demonstrations, and what went wrong."""

    adjudicator: str
    answer: Answer | None
    demonstrations: list[str]
    prompt_hash: str
    error: str | None = None
    tokens: int = 0
    cached: bool = False
    attempts: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {"adjudicator": self.adjudicator, "demonstrations": list(self.demonstrations),
                "prompt_hash": self.prompt_hash,
                "answer": self.answer.as_dict() if self.answer else None,
                "error": self.error, "tokens": self.tokens, "cached": self.cached,
                "attempts": list(self.attempts)}


@dataclass(frozen=True)
class Demonstration:
    """A labelled example shown to the adjudicator."""

    id: str
    label: str
    image: np.ndarray
    embedding: np.ndarray


class Adjudicator(Protocol):
    name: str

    def adjudicate(self, image: np.ndarray, demonstrations: list[Demonstration],
                   class_names: list[str], embedding: np.ndarray | None = None) -> Verdict: ...
