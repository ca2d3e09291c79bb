"""JSON-RPC 2.0 messages as DTMicroscope's TEM server exchanges them.

Requests carry `params` as an object of keyword arguments. Replies carry `result`, or an
`error` that is either a plain string (DTMicroscope's server) or a JSON-RPC error object.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from instruments.devices.errors import (
    BadFrame,
    InstrumentError,
    ProtocolError,
    RemoteError,
    SafetyRefused,
)

_TYPED_REMOTE = {"SafetyRefused": SafetyRefused, "BadFrame": BadFrame}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes; numpy arrays and scalars become lists and numbers."""
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode("utf-8")


def to_plain(obj: Any) -> Any:
    """A JSON-shaped copy of `obj` (numpy values become numbers/lists, other unknown
    objects their str), safe for any wire serializer."""
    def default(value: Any) -> Any:
        try:
            return _json_default(value)
        except TypeError:
            return str(value)

    return json.loads(json.dumps(obj, default=default))


def request(request_id: int, method: str, params: dict[str, Any] | None = None) -> dict:
    """A JSON-RPC 2.0 request object."""
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}


def success(request_id: Any, result: Any) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def failure(request_id: Any, message: str, code: int = -32000) -> dict:
    """An error reply. The message is a plain string, as DTMicroscope's server sends it;
    `code` is kept alongside for JSON-RPC 2.0 clients."""
    return {"jsonrpc": "2.0", "id": request_id, "error": message, "code": code}


def remote_error(text: str, where: str = "", what: str = "server") -> InstrumentError:
    """The typed error for a server-side failure message. Servers send instrument errors as
    "<ClassName>: <message>"; a refusal or a bad frame keeps its type, the rest is RemoteError."""
    name, sep, rest = text.partition(": ")
    if sep and name in _TYPED_REMOTE:
        return _TYPED_REMOTE[name](f"{what}: {rest}", where)
    return RemoteError(f"{what} error: {text}", where)


def decode_reply(payload: bytes, expected_id: int, where: str = "") -> dict[str, Any]:
    """Decode a reply payload into its message (with a `result`), or raise the typed error
    it carries."""
    try:
        reply = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"reply is not valid JSON: {exc}", where) from exc
    if not isinstance(reply, dict):
        raise ProtocolError(f"reply is a {type(reply).__name__}, not a JSON object", where)
    if "error" in reply and reply["error"] is not None:
        error = reply["error"]
        if isinstance(error, dict):
            message = f"{error.get('message', error)} (code {error.get('code')})"
        else:
            message = str(error)
        raise remote_error(message, where)
    if "result" not in reply:
        raise ProtocolError(f"reply has neither 'result' nor 'error': {str(reply)[:200]}",
                            where)
    if "id" in reply and reply["id"] is not None and reply["id"] != expected_id:
        raise ProtocolError(f"reply id {reply['id']!r} does not match request id "
                            f"{expected_id}", where)
    return reply


def parse_request(payload: bytes) -> tuple[Any, str, dict[str, Any] | list[Any]]:
    """Decode a request payload into (id, method, params); ValueError if it is not one
    (also for JSON nested too deep to decode)."""
    try:
        message = json.loads(payload.decode("utf-8"))
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        raise ValueError("request must be a JSON object with a string 'method'")
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict | list):
        raise ValueError("'params' must be an object or an array")
    return message.get("id"), message["method"], params
