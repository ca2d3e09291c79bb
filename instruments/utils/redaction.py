"""The one redaction filter for every text that reaches a file or a log: secret values from the
environment (OPENAI_API_KEY and every *_API_KEY / *_TOKEN / *_SECRET), keys registered by the
code that uses them (the adjudicator's), `Authorization` header values and `sk-` style tokens
are replaced by `[redacted]`, in plain text and in the forms an endpoint may echo them back:
JSON-escaped (`\\/`), URL-encoded (`%2F`, `%2B`, `+` for a blank) and base64 (standard and
URL-safe, at any alignment inside a longer base64 text). The userinfo of every URL
(`http://user:PASS@host`) is dropped, and its password counts as a secret from then on.

`redact` works on text, `redact_value` on JSON-like values, `redact_bytes` on encoded data (known
secret values only, length kept); `install_log_redaction` makes every log record (message and
traceback) pass through `redact`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import os
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

MASK = "[redacted]"
MIN_SECRET = 8                                   # shorter values are not treated as secrets
_SECRET_ENV = re.compile(r"(API_KEY|APIKEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
# scheme://user[:password]@ -- the userinfo of a URL, wherever it appears in a text
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*:(?:\\?/){2})[^\s/@\"'<>]*(?=@)")
_PATTERNS = (
    _USERINFO,
    # Authorization: Bearer X / "authorization": "Basic X" / authorization=X
    re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token)\s+)?+"""
               r"""(?!(?:null|true|false|\d+)\b|\[redacted\])[^\s"',;}\]]+"""),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"()\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"""(?i)((?:api[_-]?key|x-api-key)["']?\s*[:=]\s*["']?)[^\s"',;}\]]{8,}"""),
)
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact `value` wherever it appears from now on (a key given other than by env)."""
    if value and len(value) >= MIN_SECRET:
        with _lock:
            _registered.add(value)


def strip_userinfo(url: str | None) -> str | None:
    """`url` without `user:password@` (the password registered as a secret)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password:
        register_secret(unquote(parts.password))
        register_secret(parts.password)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend on `raw` alone, for each of the three alignments it
    can have inside a longer encoded text (standard and URL-safe alphabets)."""
    cores = set()
    for offset in range(3):
        text = base64.b64encode(bytes(offset) + raw + bytes(2)).decode()
        core = text[math.ceil(8 * offset / 6):(8 * (offset + len(raw))) // 6]
        cores |= {core, core.translate(str.maketrans("+/", "-_"))}
    return cores


@functools.lru_cache(maxsize=256)
def encodings(secret: str) -> frozenset[str]:
    """`secret` and the forms it takes JSON-escaped, URL-encoded and base64-encoded."""
    escaped = json.dumps(secret)[1:-1]
    forms = {secret, escaped, escaped.replace("/", "\\/"), quote(secret, safe=""),
             quote(secret, safe="").lower(), quote_plus(secret, safe=""), quote(secret)}
    forms |= _base64_cores(secret.encode())
    return frozenset(f for f in forms if len(f) >= MIN_SECRET)


def _secrets() -> list[str]:
    found = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= MIN_SECRET}
    with _lock:
        found |= _registered
    forms = set().union(*(encodings(v) for v in found)) if found else set()
    return sorted(forms, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every known secret value, Authorization value and token-like word masked."""
    return _redact(text, _secrets())


def _redact(text: str, secrets: list[str]) -> str:
    if len(text) < MIN_SECRET:          # no secret and no pattern match is this short
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """`data` (any encoding of text: msgpack, UTF-8 JSON) with every known secret value
    overwritten by as many `*`: lengths stay, so length-prefixed formats stay readable."""
    for secret in _secrets():
        raw = secret.encode()
        if raw in data:
            data = data.replace(raw, b"*" * len(raw))
    return data


def redact_value(value: Any) -> Any:
    """A JSON-like value with every string (keys included) passed through `redact`."""
    return _redact_value(value, _secrets())


def _redact_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _redact(value, secrets)
    if isinstance(value, dict):
        return {_redact_value(k, secrets): _redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, secrets) for v in value)
    return value


_installed = False


def install_log_redaction() -> None:
    """Every log record made from now on carries a redacted message and traceback."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except Exception:  # noqa: BLE001 - a record that cannot format is left to logging
            return record
        if record.exc_info:
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
