"""On-disk cache of adjudicator answers, keyed by the hash of image + demonstrations + model +
prompt, so a replay or a resumed session never pays twice for the same question."""

from __future__ import annotations

import json
from pathlib import Path

from agent.adjudication.base import Answer
from instruments.utils import atomic_file


class AnswerCache:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> Answer | None:
        path = self.folder / f"{key}.json"
        if not path.exists():
            return None
        try:
            return Answer(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None

    def put(self, key: str, answer: Answer) -> None:
        atomic_file.write_text(self.folder / f"{key}.json", json.dumps(answer.as_dict()))
