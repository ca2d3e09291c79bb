"""The replay row: a frame's stored decision beside the one the replay made, both the
session file's one flat row (instruments/session_file/decision_row.py). Single-file replay
(its diff) and archive replay (its Parquet `frames` dataset) print and store this row."""

from __future__ import annotations

from typing import Any

from instruments.session_file.decision_row import DecisionRow

REFUSED = "refused"      # the new route of a frame the replay could not classify


def replay_row(stored: DecisionRow, new: DecisionRow | None) -> dict[str, Any]:
    """Stored vs new decision of one frame; top-k is the new classifier's. `new` None: the
    replay refused the frame (NaN/Inf pixels, or turned down by the instrument layer): route
    REFUSED, never `changed`. `changed`: the final label or the route differs."""
    top_k = new.top_k if new else ()
    return {"frame_id": stored.frame_id,
            "stored_label": stored.label, "stored_route": stored.route,
            "stored_confidence": stored.confidence,
            "new_label": new.label if new else None, "new_route": new.route if new else REFUSED,
            "new_confidence": new.confidence if new else None,
            "top_k_labels": [label for label, _ in top_k],
            "top_k_probs": [p for _, p in top_k],
            "changed": new is not None and (stored.label, stored.route) != (new.label, new.route),
            "truth": stored.truth}
