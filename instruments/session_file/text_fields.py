"""The one check of free text a person types into a session (operator names, notes, labels):
it is stored in the decision record and drawn in reports, so it is one printable line of at
most 200 characters, and an operator name or label is not blank. Front ends (web page,
terminal) and the decision record call `checked_text`."""

from __future__ import annotations

import unicodedata

MAX_TEXT = 200


def checked_text(value: str | None, what: str, required: bool = True) -> str:
    """`value` without surrounding blanks; ValueError when it is blank (and `required`),
    longer than MAX_TEXT characters or holds a control character."""
    text = (value or "").strip()
    if required and not text:
        raise ValueError(f"{what} must not be blank")
    if len(text) > MAX_TEXT:
        raise ValueError(f"{what} is longer than {MAX_TEXT} characters")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs")), None)
    if bad is not None:
        raise ValueError(f"{what} holds a control character (U+{ord(bad):04X})")
    return text
