"""Class knowledge files: one LLM-style technical description per class.

Format `micagent-knowledge/1` (written by `micagent describe`, and the bundled
`sem_classes.json` for the ten SEM classes): {"format", "provenance", "prompts": [{"title",
"text"}], "classes": {name: {"answers": [...], "description": str, "sha256"}}, "sha256"}.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "micagent-knowledge/1"
BUNDLED_SEM = Path(__file__).with_name("sem_classes.json")


class KnowledgeError(ValueError):
    """A knowledge file that is missing, malformed, or lacks classes the caller needs."""


@dataclass
class Knowledge:
    path: str
    provenance: dict
    descriptions: dict[str, str]
    sha256: str

    def for_classes(self, class_names: list[str]) -> list[str]:
        """Descriptions in the order of `class_names`; KnowledgeError naming missing classes."""
        missing = [c for c in class_names if c not in self.descriptions]
        if missing:
            raise KnowledgeError(f"{self.path}: no description for classes {missing}")
        return [self.descriptions[c] for c in class_names]


def descriptions_hash(descriptions: dict[str, str]) -> str:
    """sha256 over the per-class description hashes (order-independent)."""
    per = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in descriptions.items()}
    return hashlib.sha256(json.dumps(per, sort_keys=True).encode()).hexdigest()


def load_knowledge(path: str | Path = BUNDLED_SEM) -> Knowledge:
    """Read a knowledge file and check its per-class hashes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KnowledgeError(f"cannot read knowledge file {path}: {exc}") from exc
    if data.get("format") != FORMAT or not isinstance(data.get("classes"), dict):
        raise KnowledgeError(f"{path} is not a {FORMAT} knowledge file")
    descriptions = {}
    for name, entry in data["classes"].items():
        text = entry.get("description", "")
        if not text.strip():
            raise KnowledgeError(f"{path}: class {name!r} has an empty description")
        if entry.get("sha256") and hashlib.sha256(text.encode()).hexdigest() != entry["sha256"]:
            raise KnowledgeError(f"{path}: description of {name!r} does not match its sha256")
        descriptions[name] = text
    return Knowledge(str(path), data.get("provenance", {}), descriptions,
                     descriptions_hash(descriptions))


def class_name_knowledge(class_names: list[str]) -> Knowledge:
    """Fallback when no knowledge file covers the classes: each class's name as its text.

    Honest but weak; the provenance says so and training reports it.
    """
    desc = {c: f"An electron micrograph of {c.replace('_', ' ')}." for c in class_names}
    return Knowledge("<class names>", {"how": "class names only; no knowledge file covered "
                                              "these classes"}, desc, descriptions_hash(desc))


def resolve_knowledge(path: str | Path | None, class_names: list[str]) -> Knowledge:
    """The knowledge for `class_names`: the given file (must cover them), else the bundled
    SEM file when it covers them, else class names only."""
    if path is not None:
        know = load_knowledge(path)
        know.for_classes(class_names)
        return know
    bundled = load_knowledge(BUNDLED_SEM)
    if all(c in bundled.descriptions for c in class_names):
        return bundled
    return class_name_knowledge(class_names)
