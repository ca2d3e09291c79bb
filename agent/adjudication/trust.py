"""Which adjudicator may overrule the classifier: only one whose accuracy, measured on the
frames the policy sends it (unsure frames of held-out data), is higher than the classifier's
on the same frames.

`adjudication.json` beside a checkpoint (written by `micagent measure-adjudicators`,
workflows/training/adjudication.py) holds, per adjudicator name, on the unsure held-out frames
where it gave a class: its accuracy, the classifier's accuracy on those same frames, and how
many frames it answered and abstained on. An adjudicator that is not in the file has not been
measured and is not trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUST_FILE = "adjudication.json"


class TrustError(ValueError):
    """A measurement file that cannot be read."""


@dataclass
class AdjudicatorTrust:
    """The measured accuracies of adjudicators, by name (`measured`), and the whole record."""

    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def allows(self, name: str) -> bool:
        """True when `name` was measured, answered some frames, and beat the classifier."""
        m = self.measured.get(name)
        return bool(m) and m.get("answered", 0) > 0 and \
            m["accuracy"] > m["classifier_accuracy"]

    def trusted(self, names: list[str]) -> tuple[str, ...]:
        return tuple(n for n in names if self.allows(n))

    @classmethod
    def load(cls, folder: str | Path) -> AdjudicatorTrust:
        """The measurement beside a checkpoint; an empty one (nothing trusted) without it."""
        path = Path(folder) / TRUST_FILE
        if not path.is_file():
            return cls()
        try:
            record = json.loads(path.read_text())
            return cls(dict(record["adjudicators"]), record)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrustError(f"cannot read {path}: {exc}") from exc
