"""Rows for the three servers, each flooded and probed on loopback, then asked a good request:

- the web approval page: 20 MB POSTs without a token, wrong Host names, oversized and chunked
  bodies with the token; every refusal must come on the headers, before the body is sent;
- `twin serve --protocol dtm` (Pyro5): idle, garbage and half-hello connections by the
  hundred; register_data outside the data root must be refused alike for existing and
  missing paths;
- `twin serve --protocol tem` (netstring JSON-RPC): idle, garbage, oversized-length and
  deeply nested requests.
The server process must stay up and answer a good request within a bound after every flood."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from benchmarks.fault_campaign.common import Clock, Row, twin_server

GOOD_WITHIN_S = 10.0


def _answer(host: str, port: int, head: bytes, body: bytes = b"", wait: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=wait) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return data


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _post_20mb(host: str, port: int) -> bytes:
    """A 20 MB POST without a token, body really sent: the answer, read while sending."""
    head = (f"POST /api/decide/x HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Length: {20 * 2**20}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(320):
                sock.sendall(b"x" * 65536)
        except OSError:               # the server answered and closed: the rest is not read
            pass
        try:
            return sock.recv(65536)
        except OSError:
            return b""


def web(work: Path, floods: int, seed: int) -> Row:
    """The approval page in this process (as `micagent run --ui web` serves it)."""
    import httpx

    from agent.approval_broker import ApprovalBroker
    from workflows.web.approval import TOKEN_HEADER, start_web_ui

    clock, row = Clock(), Row("web page: floods and probes")
    ui = start_web_ui(ApprovalBroker(), class_names=["Fibres", "Tips"])
    host, port, big = "127.0.0.1", ui.port, 20 * 2**20
    probes = [
        (f"POST /api/decide/x HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {big}", 401),
        (f"POST /api/decide/x?token=wrong HTTP/1.1\r\nHost: {host}\r\nContent-Length: {big}",
         401),
        (f"POST /api/decide/x?token={ui.token} HTTP/1.1\r\nHost: rebind.example\r\n"
         f"Content-Length: {big}", 400),
        (f"POST /api/decide/x?token={ui.token} HTTP/1.1\r\nHost: localhost\r\n"
         f"Content-Length: {big}", 413),
        (f"GET /api/pending HTTP/1.1\r\nHost: evil.example:{port}\r\n{TOKEN_HEADER}: "
         f"{ui.token}", 400),
    ]
    good = 0
    rss = None
    try:
        for round_ in range(floods):
            row.cases += 1
            answer = _post_20mb(host, port)
            if answer and not answer.startswith(b"HTTP/1.1 401"):
                row.crashes += 1
                row.note(f"20 MB POST without token -> {answer[:40]!r}")
            for head, status in probes:
                row.cases += 1
                started = time.monotonic()
                answer = _answer(host, port, head.encode())  # headers only: body never sent
                if not answer.startswith(f"HTTP/1.1 {status}".encode()) \
                        or time.monotonic() - started > 5:
                    row.crashes += 1
                    row.note(f"round {round_}: {head.split(chr(13))[0]!r} -> {answer[:40]!r}")
            row.cases += 1
            chunk = b"a" * 16384
            body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + \
                b"0\r\n\r\n"
            answer = _answer(host, port, (f"POST /api/decide/x HTTP/1.1\r\nHost: {host}\r\n"
                                          f"{TOKEN_HEADER}: {ui.token}\r\nTransfer-Encoding: "
                                          "chunked").encode(), body)
            if not answer.startswith(b"HTTP/1.1 413"):
                row.crashes += 1
                row.note(f"chunked 128 KiB body -> {answer[:40]!r}")
            reply = httpx.get(f"http://{host}:{port}/api/pending", params={"token": ui.token},
                              timeout=GOOD_WITHIN_S)
            good += reply.status_code == 200
            rss = _rss_mb() if rss is None else rss          # after a warm-up round
    finally:
        ui.stop()
    grew = _rss_mb() - rss
    row.note(f"process memory {grew:+.1f} MB over {floods - 1} rounds after the first, a 20 MB "
             "body sent without token in each")
    if grew > 20:
        row.crashes += 1
    row.good_after = f"{good}/{floods}"
    row.seconds = clock()
    return row


def _flood(host: str, port: int, idle: int, garbage: int, extra: list[bytes],
           rng: np.random.Generator) -> list[socket.socket]:
    """Open `idle` silent connections, send `garbage` random-byte ones and each of `extra`;
    return the sockets still open (the caller closes them after the good request)."""
    held = []
    for _ in range(idle):
        try:
            held.append(socket.create_connection((host, port), timeout=5))
        except OSError:
            break
    for payload in [rng.bytes(int(rng.integers(1, 4096))) for _ in range(garbage)] + extra:
        try:
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(payload)
            held.append(sock)
        except OSError:
            pass
    return held


def _good_dtm(host: str, port: int) -> bool:
    from instruments.devices.dtm_client import DTMicroscopeClient

    started = time.monotonic()
    try:
        client = DTMicroscopeClient(host, port, timeout=GOOD_WITHIN_S)
        try:
            client.status()
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure is what this row counts
        return False
    return time.monotonic() - started < GOOD_WITHIN_S


def _good_tem(host: str, port: int) -> bool:
    from instruments.devices.tem_client import TemClient

    started = time.monotonic()
    try:
        client = TemClient(host, port, timeout=GOOD_WITHIN_S)
        try:
            client.status()
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False
    return time.monotonic() - started < GOOD_WITHIN_S


def dtm(work: Path, floods: int, idle: int, seed: int) -> Row:
    import Pyro5.api

    from instruments.devices.dtm_client import DTMicroscopeClient
    from instruments.devices.errors import InstrumentError

    clock, row = Clock(), Row("dtm server (Pyro5): floods")
    rng = np.random.default_rng(seed)
    root = work / "dtm_root"
    root.mkdir()
    outside = work / "outside.h5"
    outside.write_bytes(b"not even HDF5")
    good = 0
    with twin_server("dtm", work, data_root=root) as served:
        for _ in range(floods):
            half_hello = [b"PYRO" + rng.bytes(20) for _ in range(10)]
            held = _flood(served.host, served.port, idle, garbage=50, extra=half_hello, rng=rng)
            row.cases += len(held)
            ok = _good_dtm(served.host, served.port)
            good += ok
            for sock in held:
                sock.close()
            if not served.alive:
                row.crashes += 1
                row.note("the server process died")
                break
        said = []
        for path in (outside, work / "missing.h5", Path("../outside.h5")):
            row.cases += 1
            client = DTMicroscopeClient(served.host, served.port, timeout=GOOD_WITHIN_S)
            client.initialize_microscope("STEM")
            try:
                client.register_data(str(path))
                row.crashes += 1
                row.note(f"register_data({path}) outside the root was accepted")
            except InstrumentError as exc:
                said.append(str(exc).replace(str(path), "PATH"))
            finally:
                client.close()
        if len(set(said)) != 1:
            row.crashes += 1
            row.note("register_data outside the root answers differently by path: "
                     + " | ".join(said))
        proxy = Pyro5.api.Proxy(f"PYRO:microscope.server@{served.host}:{served.port}")
        proxy._pyroTimeout = GOOD_WITHIN_S
        row.cases += 1
        try:
            proxy.get_spectrum_image("Channel_999")      # no data: a protocol error, not a crash
        except Exception as exc:  # noqa: BLE001
            if not served.alive:
                row.crashes += 1
                row.note(f"bad call killed the server: {exc}")
        proxy._pyroRelease()
    row.good_after = f"{good}/{floods}"
    row.seconds = clock()
    return row


def tem(work: Path, floods: int, idle: int, seed: int) -> Row:
    clock, row = Clock(), Row("tem server (JSON-RPC): floods")
    rng = np.random.default_rng(seed)
    deep = b"[" * 200_000 + b"]" * 200_000
    nested = str(len(deep)).encode() + b":" + deep + b","
    hostile = [b"99999999999999:", b"12:not json at,", b"5:[1,2],", nested,
               b'40:{"jsonrpc":"2.0","id":1,"method":"nope"},']
    good = 0
    with twin_server("tem", work) as served:
        for _ in range(floods):
            held = _flood(served.host, served.port, idle, garbage=50, extra=hostile, rng=rng)
            row.cases += len(held)
            ok = _good_tem(served.host, served.port)
            good += ok
            for sock in held:
                sock.close()
            if not served.alive:
                row.crashes += 1
                row.note("the server process died")
                break
        tracebacks = sum("Traceback" in line for line in served.output)
        if tracebacks:
            row.crashes += tracebacks
            row.note(f"{tracebacks} tracebacks in the server's output")
    row.good_after = f"{good}/{floods}"
    row.seconds = clock()
    return row
