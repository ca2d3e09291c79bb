"""The netstring JSON-RPC server of the TEM protocol, shared by the twin's `tem` server and
the instrument bridges. Standard library and numpy only: bridges run it inside an instrument
PC's own Python.

- Methods are the public callables of a service object; parameters are checked against their
  signatures; every exception a method (or the decoder) raises becomes an error reply
  "<ClassName>: <message>", JSON nested too deep included. The connection stays usable.
- Arrays a method returns go out as DTMicroscope's `[list, shape, dtype]` triple, unless the
  connection asked for binary frames (`set_transport` with `binary: true`): then the JSON reply
  carries `{"__array__": i, "shape", "dtype"}` references and `"buffers": [nbytes, ...]`, and
  each array follows as one raw netstring. Clients that never ask get lists.
- Bounded: at most `max_workers` connection threads; when all are taken, the connection that
  has waited longest for its next request is closed to make room (a flood of silent
  connections cannot lock good clients out); each read and write has an idle timeout; the
  listen backlog is `BACKLOG`.
"""

from __future__ import annotations

import inspect
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from instruments.devices.errors import InstrumentError, ProtocolError
from instruments.devices.jsonrpc import dumps, failure, parse_request, success
from instruments.devices.netstring import NetstringReader, encode
from instruments.devices.wire_arrays import buffer_ref, raw_bytes, to_tuple

MAX_REQUEST_BYTES = 16 << 20
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_MAX_WORKERS = 32
BACKLOG = 128
BINARY_TRANSPORT = "netstring-buffers-1"

Executor = Callable[[Callable[..., Any], tuple, dict], Any]


def _direct(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return func(*args, **kwargs)


@dataclass
class _Peer:
    """One connection's state: its socket, whether it asked for binary frames, and since
    when it has been waiting for a request (None while a call runs)."""

    sock: socket.socket
    binary: bool = False
    waiting_since: float | None = None


def encode_reply(reply: dict[str, Any], binary: bool) -> list[bytes | memoryview]:
    """The wire parts of a reply: one JSON netstring, then (binary) one netstring per array."""
    arrays: list[np.ndarray] = []

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if binary:
                arrays.append(value)
                return buffer_ref(len(arrays) - 1, value)
            return list(to_tuple(value))
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    if "result" in reply:
        reply = {**reply, "result": walk(reply["result"])}
    if arrays:
        reply["buffers"] = [int(a.nbytes) for a in arrays]
    parts: list[bytes | memoryview] = [encode(dumps(reply))]
    for array in arrays:
        data = raw_bytes(array)
        parts += [b"%d:" % data.nbytes, data, b","]
    return parts


class _Handler(socketserver.BaseRequestHandler):
    server: RpcServer

    def handle(self) -> None:
        server, sock = self.server, self.request
        sock.settimeout(server.idle_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = server.peers[sock]
        reader = NetstringReader(sock, where=str(self.client_address),
                                 max_message=server.max_request)
        while True:
            peer.waiting_since = time.monotonic()
            try:
                payload = reader.read()
            except ProtocolError as exc:  # the stream cannot be resynchronised: say why, close
                self._send(failure(None, f"Invalid netstring: {exc}", code=-32700), peer)
                return
            except InstrumentError:
                return  # the peer went away, or stayed silent past the idle timeout
            finally:
                peer.waiting_since = None
            if payload is None:
                return
            reply = server.respond(payload, peer)
            if reply is None or not self._send(reply, peer):
                return  # a drop fault, or the client left

    def _send(self, reply: dict[str, Any], peer: _Peer) -> bool:
        try:
            parts = encode_reply(reply, peer.binary)
        except Exception as exc:  # noqa: BLE001 - e.g. a result JSON cannot carry
            parts = encode_reply(failure(reply.get("id"), f"{type(exc).__name__}: reply "
                                         f"cannot be encoded: {exc}", code=-32603), False)
        try:
            for part in parts:
                self.request.sendall(part)
            return True
        except OSError:  # the client left mid-reply, or stopped reading past the timeout
            return False


class RpcServer(socketserver.TCPServer):
    """Netstring JSON-RPC over TCP for one service object (see the module docstring)."""

    allow_reuse_address = True
    request_queue_size = BACKLOG

    def __init__(self, service: Any, host: str = "127.0.0.1", port: int = 0, *,
                 executor: Executor = _direct, faults: Any = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
                 max_workers: int = DEFAULT_MAX_WORKERS,
                 max_request: int = MAX_REQUEST_BYTES) -> None:
        self.service, self.executor, self.faults = service, executor, faults
        self.idle_timeout, self.max_workers, self.max_request = (idle_timeout, max_workers,
                                                                 max_request)
        self.peers: dict[socket.socket, _Peer] = {}
        self._peers_lock = threading.Lock()
        self._serving = False
        super().__init__((host, port), _Handler)

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    # --- bounded connection threads -------------------------------------------------------
    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._peers_lock:
            if len(self.peers) >= self.max_workers and not self._evict_idlest():
                refuse = True
            else:
                refuse = False
                self.peers[request] = _Peer(request)
        if refuse:
            self._refuse(request)
            return
        threading.Thread(target=self._serve_one, args=(request, client_address),
                         daemon=True).start()

    def _evict_idlest(self) -> bool:
        """Close the connection that has waited longest for a request (caller holds lock)."""
        waiting = [p for p in self.peers.values() if p.waiting_since is not None]
        if not waiting:
            return False
        idlest = min(waiting, key=lambda p: p.waiting_since)
        try:
            idlest.sock.shutdown(socket.SHUT_RDWR)  # its reader sees EOF; its thread ends
        except OSError:
            pass
        del self.peers[idlest.sock]
        return True

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(1.0)
            for part in encode_reply(failure(None, f"server busy: {self.max_workers} "
                                                   "connections are running calls"), False):
                request.sendall(part)
        except OSError:
            pass
        self.shutdown_request(request)

    def _serve_one(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure never stops the server
            self.handle_error(request, client_address)
        finally:
            with self._peers_lock:
                self.peers.pop(request, None)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        kind, exc = sys.exc_info()[:2]
        print(f"rpc server: connection {client_address} ended by "
              f"{getattr(kind, '__name__', kind)}: {exc}", file=sys.stderr)

    # --- calls ----------------------------------------------------------------------------
    def _fault(self) -> bool:
        """Apply the injected transport fault of this call; True: drop it unanswered."""
        action, seconds = (self.faults.next_call() if self.faults is not None
                           else (None, 0.0))
        if action == "stall":
            time.sleep(seconds)
        return action == "drop"

    def respond(self, payload: bytes, peer: _Peer) -> dict[str, Any] | None:
        """The reply to one request payload (None: an injected drop); never raises.
        Transport negotiation is not a service call: faults count service calls only."""
        try:
            request_id, method, params = parse_request(payload)
        except (ValueError, UnicodeDecodeError) as exc:  # JSON errors and too-deep nesting
            return failure(None, f"Invalid JSON-RPC request: {exc}", code=-32600)
        try:
            if method == "set_transport":
                return success(request_id, self._set_transport(peer, params))
            if self._fault():
                return None
            func = getattr(self.service, method, None)
            if method.startswith("_") or not callable(func):
                return failure(request_id, f"Method {method} not implemented on server.",
                               code=-32601)
            args, kwargs = ((), params) if isinstance(params, dict) else (tuple(params), {})
            try:
                inspect.signature(func).bind(*args, **kwargs)
            except TypeError as exc:
                return failure(request_id, f"bad parameters for {method}: {exc}", code=-32602)
            return success(request_id, self.executor(func, args, kwargs))
        except Exception as exc:  # noqa: BLE001 - every failure is the client's error reply
            return failure(request_id, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _set_transport(peer: _Peer, params: Any) -> dict[str, Any]:
        """Per connection: `binary: true` sends arrays as raw netstrings from now on."""
        if not isinstance(params, dict) or not isinstance(params.get("binary"), bool):
            raise ValueError("set_transport takes {'binary': true|false}")
        peer.binary = params["binary"]
        return {"binary": peer.binary, "transport": BINARY_TRANSPORT if peer.binary
                else "json-lists"}

    # --- lifecycle ------------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.2) -> None:
        self._serving = True
        super().serve_forever(poll_interval)

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (the caller's thread stays free, e.g. for the
        instrument's own main-thread work)."""
        self._serving = True
        thread = threading.Thread(target=self.serve_forever, name="rpc-server", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting, close every connection and the listening socket."""
        if self._serving:
            self.shutdown()       # returns at once when serve_forever already ended
        with self._peers_lock:
            for sock in list(self.peers):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.server_close()
