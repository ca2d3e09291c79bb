"""The shared netstring JSON-RPC server (instruments/devices/rpc_server.py) over real loopback
sockets:
binary frames only for connections that ask, identical arrays on both paths, and a server
that stays up for the next good client whatever one connection sends."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from raw_rpc import netstring, read_reply

from instruments.devices.errors import RemoteError
from instruments.devices.rpc_server import BACKLOG, RpcServer
from instruments.devices.tem_client import TemClient

ARRAYS = {
    "frame": np.random.default_rng(0).random((1024, 1024), dtype=np.float32),
    "counts": np.arange(-300, 300, dtype=np.int16).reshape(20, 30),
    "strided": np.random.default_rng(1).random((64, 48))[:, ::3],   # not C-contiguous
    "scalar": np.array(2.5),
    "big_endian": np.arange(12, dtype=">f8").reshape(3, 4),
}


class Service:
    def __init__(self) -> None:
        self.holding = 0                      # calls of `hold` now running
        self.release = threading.Event()
        self._lock = threading.Lock()

    def get_capabilities(self) -> dict:
        return {"server": "test", "binary_transport": "netstring-buffers-1"}

    def acquire_image(self, device: str) -> np.ndarray:
        return ARRAYS[device]

    def acquire_frame(self, device: str) -> dict:
        return {"image": ARRAYS[device], "extra": [ARRAYS["counts"], {"n": 1}]}

    def explode(self) -> None:
        raise KeyError("a handler bug")

    def unencodable(self) -> object:
        return object()

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def hold(self) -> str:
        """Run until the test releases it."""
        with self._lock:
            self.holding += 1
        self.release.wait(30)
        return "released"


@pytest.fixture()
def server():
    srv = RpcServer(Service(), "127.0.0.1", 0, idle_timeout=1.0, max_workers=4)
    srv.start()
    yield srv
    srv.service.release.set()
    srv.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Return once `condition()` holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def ended_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` or written to it (without reading its data)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True                           # reset by the server
    return True


def connect(srv: RpcServer, **kw) -> TemClient:
    host, port = srv.address.rsplit(":", 1)
    return TemClient(host, int(port), timeout=10, **kw)


def call_raw(sock: socket.socket, method: str, params=None, request_id=1) -> dict:
    sock.sendall(netstring(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                       "params": params or {}}).encode()))
    return read_reply(sock)


@pytest.mark.parametrize("name", list(ARRAYS))
def test_binary_and_list_paths_return_identical_arrays(server, name):
    binary, listed = connect(server), connect(server, binary=False)
    assert binary.binary and not listed.binary
    a, b = binary.acquire_image(name), listed.acquire_image(name)
    expected = ARRAYS[name]
    for got in (a, b):
        assert got.shape == expected.shape and np.array_equal(got, expected)
    assert a.dtype == expected.dtype and a.flags.writeable
    frame = binary._call("acquire_frame", {"device": name})
    assert np.array_equal(frame["image"], expected)
    assert np.array_equal(frame["extra"][0], ARRAYS["counts"]) and frame["extra"][1] == {"n": 1}


def test_a_client_that_never_asks_gets_dtmicroscope_lists(server):
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        reply = call_raw(sock, "acquire_image", {"device": "counts"})
    values, shape, dtype = reply["result"]
    assert "buffers" not in reply and shape == [20, 30] and dtype == "int16"
    assert np.array_equal(np.array(values, dtype=dtype), ARRAYS["counts"])


def test_json_nested_200000_deep_is_a_protocol_error_and_the_connection_lives(server):
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(netstring(b"[" * 200_000 + b"]" * 200_000))
        reply = read_reply(sock)
        assert reply["id"] is None and "nested too deeply" in reply["error"]
        assert call_raw(sock, "sleep", {"seconds": 0})["result"] == 0


def test_every_handler_exception_becomes_an_error_reply(server):
    client = connect(server)
    with pytest.raises(RemoteError, match="KeyError: 'a handler bug'"):
        client._call("explode")
    with pytest.raises(RemoteError, match="cannot be encoded"):
        client._call("unencodable")
    with pytest.raises(RemoteError, match="bad parameters"):
        client._call("sleep", {"minutes": 1})
    assert client._call("sleep", {"seconds": 0}) == 0


def test_silent_connections_are_closed_after_the_idle_timeout(server):
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        wait_until(lambda: len(server.peers) == 1, "the server took the connection")
        (served,) = server.peers
        wait_until(lambda: served.gettimeout() is not None, "the connection's thread started")
        assert served.gettimeout() == server.idle_timeout == 1.0   # the timeout it serves with
        assert sock.recv(1) == b""          # the server, not our 30 s, hangs up on silence
    wait_until(lambda: not server.peers, "the connection's thread ended")


def test_a_flood_of_silent_connections_cannot_lock_good_clients_out(server):
    host, port = server.address.rsplit(":", 1)
    flood = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
    try:
        wait_until(lambda: sum(map(ended_by_server, flood)) >= 40 - server.max_workers,
                   "every connection beyond the workers evicted or refused")
        assert len(server.peers) <= server.max_workers     # bounded connection threads
        client = connect(server)                            # evicts the longest-silent one
        assert client._call("sleep", {"seconds": 0}) == 0
    finally:
        for sock in flood:
            sock.close()


def test_when_every_worker_runs_a_call_a_new_client_is_told_busy(server):
    host, port = server.address.rsplit(":", 1)
    busy = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
    for sock in busy:
        sock.sendall(netstring(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "hold",
                                           "params": {}}).encode()))
    wait_until(lambda: server.service.holding == 4, "every worker running a call")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        assert "server busy" in read_reply(sock)["error"]
    server.service.release.set()
    for sock in busy:
        assert read_reply(sock)["result"] == "released"
        sock.close()
    assert connect(server)._call("sleep", {"seconds": 0}) == 0


def test_listen_backlog_is_large(server):
    assert server.request_queue_size == BACKLOG >= 128
