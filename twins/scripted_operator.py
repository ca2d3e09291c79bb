"""A scripted operator for learning sessions on the twin (`micagent run --learn`): it answers
each label question from the twin's ground truth (the specimen of the same seed), approving a
right proposal and relabelling a wrong one with the true class, a new class name included;
through the web page's API (`WebOperator`, what the tests and benchmarks/teach_operator.py
drive) or as the answers a terminal prompt reads (`answer_lines`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from twins.microscope import TwinMicroscope


@dataclass
class TwinOperator:
    """Ground truth of the twin specimen of `seed`, and the answers given so far."""

    seed: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.specimen = TwinMicroscope(seed=self.seed).specimen

    def truth(self, x: float, y: float, fov: float) -> str:
        return self.specimen.evaluation((x, y), fov)["label"]

    def answer(self, x: float, y: float, fov: float, proposal: str | None) -> dict[str, Any]:
        """approve when the proposal is the truth, else relabel with the truth."""
        truth = self.truth(x, y, fov)
        answer = ({"decision": "approve"} if proposal == truth
                  else {"decision": "relabel", "label": truth})
        self.answers.append({**answer, "proposal": proposal, "truth": truth})
        return answer

    def answer_lines(self, x: float, y: float, fov: float, proposal: str | None) -> list[str]:
        """The same answer as the terminal prompt reads it: decision, [label], note."""
        answer = self.answer(x, y, fov, proposal)
        return [answer["decision"], *([answer["label"]] if "label" in answer else []), ""]


class WebOperator:
    """Answers the approval page's pending label requests (`/api/pending`,
    `/api/decide/ID`) from the twin's truth in a background thread until stopped."""

    def __init__(self, url: str, operator: TwinOperator, fov: float,
                 name: str = "scripted") -> None:
        base, _, query = url.partition("/?")
        self.base, self.token = base, dict(p.split("=", 1) for p in query.split("&"))["token"]
        self.operator, self.fov, self.name = operator, fov, name
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scripted-operator",
                                        daemon=True)

    def start(self) -> WebOperator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(params={"token": self.token}, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    pending = client.get(f"{self.base}/api/pending").json()
                except httpx.HTTPError:
                    pending = []                  # the session is between requests or gone
                for view in pending:
                    self._answer(client, view)
                self._stop.wait(0.05)

    def _answer(self, client: httpx.Client, view: dict[str, Any]) -> None:
        position = view["position"] or {}
        answer = self.operator.answer(position["x"], position["y"], self.fov,
                                      view["proposal"])
        reply = client.post(f"{self.base}/api/decide/{view['request_id']}",
                            json={**answer, "operator": self.name})
        if reply.status_code != 200:
            self.errors.append(f"{reply.status_code}: {reply.text}")
