"""The approval page's front door, a raw ASGI wrapper that decides from the request line and
headers alone, before any body byte is read:

- the Host header must name the bound host, localhost, 127.0.0.1 (or ::1), or a host given
  with `--allow-host` (a DNS-rebinding page names its own host) -> else 400;
- the access token (query `?token=` or the X-Micagent-Token header) must match, compared in
  constant time -> else 401;
- a declared Content-Length over the cap -> 413 at once; a body sent without a length (chunked)
  is read by the guard up to the cap -> 413 past it, else handed to the app in one piece.
Refusals close the connection, so an unread body is never drained.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

MAX_BODY = 64 * 1024
TOKEN_HEADER = "X-Micagent-Token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """The host part of a Host header value: `[::1]:80` -> `::1`, `a.b:8080` -> `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class GuardedApp:
    """Host allow-list, token and body cap in front of `app` (an ASGI application)."""

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str],
                 max_body: int = MAX_BODY) -> None:
        self.app = app
        self.token = token.encode()
        self.hosts = {h.strip().strip("[]").lower() for h in (*hosts, *LOOPBACK_NAMES) if h}
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return                                   # no websockets here
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _reply(send, *refusal)
            return
        await self._forward(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if host_name(headers.get("host", "")) not in self.hosts:
            return 400, "host not allowed"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0] or headers.get(TOKEN_HEADER.lower(), "")
        if not secrets.compare_digest(given.encode(), self.token):
            return 401, "missing or wrong access token"
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "bad Content-Length"
            if int(length) > self.max_body:
                return 413, f"request body over {self.max_body} bytes"
        return None

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body (at most the cap) before the app sees the request, then hand it over
        in one piece; past the cap the app is never called."""
        body = bytearray()
        more = scope["method"] not in ("GET", "HEAD")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _reply(send, 413, f"request body over {self.max_body} bytes")
                return
            more = message.get("more_body", False)
        handed = False

        async def buffered_receive() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, buffered_receive, send)


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
