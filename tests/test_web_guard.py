"""The approval page's front door, over real HTTP on loopback: the Host allow-list and the token
are checked on the headers before any body byte is read, and bodies are capped at 64 KiB."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from agent.approval_broker import ApprovalBroker
from workflows.web.approval import TOKEN_HEADER, WebUIHandle, start_web_ui
from workflows.web.guard import MAX_BODY, host_name


@pytest.fixture
def ui() -> Iterator[WebUIHandle]:
    handle = start_web_ui(ApprovalBroker(), class_names=["Fibres", "Tips"],
                          allow_hosts=("scope-pc.lab",))
    yield handle
    handle.stop()


def _raw(ui: WebUIHandle, head: str, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Send `head` (+ `body`) and return what the server answers within `wait` seconds."""
    with socket.create_connection(("127.0.0.1", ui.port), timeout=wait) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def test_a_20_mb_post_without_token_is_refused_on_its_headers(ui: WebUIHandle) -> None:
    # Only the headers are sent: a server that read the body first would wait for 20 MB.
    head = (f"POST /api/decide/x HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * 2**20}")
    answer = _raw(ui, head)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"connection: close" in answer.lower()


def test_a_body_over_64_kib_is_413_with_a_good_token(ui: WebUIHandle) -> None:
    head = (f"POST /api/decide/x?token={ui.token} HTTP/1.1\r\nHost: localhost:{ui.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * 2**20}")
    assert _raw(ui, head).startswith(b"HTTP/1.1 413")
    chunked = (f"POST /api/decide/x HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {ui.token}"
               "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked")
    piece = b"a" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(MAX_BODY // 16384 + 2))
    assert _raw(ui, chunked, body + b"0\r\n\r\n").startswith(b"HTTP/1.1 413")


def test_a_body_under_the_cap_reaches_the_page(ui: WebUIHandle) -> None:
    body = json.dumps({"decision": "approve", "operator": "ann"}) + " " * 1500  # JSON padding
    reply = httpx.post(f"http://127.0.0.1:{ui.port}/api/decide/nope", params={"token": ui.token},
                       content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 404                     # routed: no such pending request


@pytest.mark.parametrize("host,status", [
    ("evil.example", 400), ("evil.example:80", 400), ("", 400), ("127.0.0.2", 400),
    ("localhost", 200), ("127.0.0.1:{port}", 200), ("[::1]:{port}", 200),
    ("scope-pc.lab:{port}", 200), ("SCOPE-PC.lab", 200),
])
def test_only_allowed_host_names_are_served(ui: WebUIHandle, host: str, status: int) -> None:
    reply = httpx.get(f"http://127.0.0.1:{ui.port}/api/pending",
                      headers={"Host": host.format(port=ui.port), TOKEN_HEADER: ui.token})
    assert reply.status_code == status


def test_a_wrong_host_is_refused_before_the_token_is_looked_at(ui: WebUIHandle) -> None:
    reply = httpx.get(f"http://127.0.0.1:{ui.port}/", headers={"Host": "rebind.example"},
                      params={"token": "wrong"})
    assert reply.status_code == 400


def test_host_names_are_parsed_like_the_header() -> None:
    assert host_name("LocalHost:8080") == "localhost"
    assert host_name("[::1]:80") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("a.b") == "a.b"
