"""The checkpointer's serializer: LangGraph's own (JsonPlus, msgpack), with every value passed
through the redaction filter on its way into the SQLite database, so an adjudicator's text
that quotes a key never reaches the disk."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from instruments.utils.redaction import redact_bytes, redact_value


class RedactingSerializer(JsonPlusSerializer):
    """JsonPlusSerializer that redacts strings (patterns and known secrets) in dicts, lists
    and tuples, then overwrites any known secret left in the encoded bytes (inside other
    objects) with as many `*` (msgpack lengths stay valid)."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        kind, data = super().dumps_typed(redact_value(obj))
        return kind, redact_bytes(data)
