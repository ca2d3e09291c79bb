"""DTMicroscope's TEM protocol (JSON-RPC 2.0 over netstrings): our twin server in a
separate process against TemClient, and TemClient against scripted raw-socket peers."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from twin_process import served_twin

from instruments.devices.errors import (
    InstrumentUnreachable,
    ProtocolError,
    RemoteError,
)
from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.tem_client import TemClient


def netstring(obj) -> bytes:
    payload = json.dumps(obj).encode()
    return b"%d:%s," % (len(payload), payload)


class ScriptedPeer:
    """A raw TCP peer that answers each request with the next scripted list of byte chunks
    (sent with a short pause between chunks); a None chunk closes the connection."""

    def __init__(self, replies: list[list[bytes | None]]) -> None:
        self.replies = replies
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            for reply in self.replies:
                if not conn.recv(65536):
                    return
                for chunk in reply:
                    if chunk is None:
                        return
                    conn.sendall(chunk)
                    time.sleep(0.05)
            time.sleep(1.0)


def no_capabilities() -> list[bytes]:
    """DTMicroscope's own server answers get_capabilities with a plain error string."""
    return [netstring({"jsonrpc": "2.0", "id": 1,
                       "error": "Method get_capabilities not implemented on server."})]


@pytest.fixture(scope="module")
def tem_twin():
    with served_twin("tem", seed=5) as served:
        yield served


def test_client_drives_the_twin_through_the_tem_methods(tem_twin):
    """(The Microscope contract itself: test_microscope_contract.py.)"""
    client = TemClient(tem_twin.host, tem_twin.port, timeout=20)
    detectors = client.get_detectors()
    assert detectors and set(detectors) == set(client.capabilities().detectors)
    applied = client.set_imaging(ImagingSettings(fov=10e-6, pixels=128,
                                                 detector=detectors[0]))
    reached = client.move_stage(StagePosition(x=40e-6, y=-30e-6, tilt=2.0))
    frame = client.acquire()
    assert frame.shape == (128, 128) and frame.settings == applied
    assert frame.stage.x == pytest.approx(reached.x) and frame.stage.tilt == pytest.approx(2.0)
    assert "label" in frame.evaluation
    stage = client.get_stage()
    assert len(stage) == 5 and stage[3] == pytest.approx(np.radians(2.0))
    assert client.acquire_image(detectors[0]).shape == (128, 128)
    assert client.status().vacuum_ok is True
    client.close()


def test_connection_per_call_like_dtmicroscopes_client(tem_twin):
    for request_id in (1, 2):
        with socket.create_connection((tem_twin.host, tem_twin.port), timeout=10) as sock:
            sock.sendall(netstring({"jsonrpc": "2.0", "id": request_id,
                                    "method": "get_detectors", "params": {}}))
            reply = sock.recv(4096)
            length, _, rest = reply.partition(b":")
            while len(rest) < int(length) + 1:
                rest += sock.recv(4096)
        assert rest.endswith(b",")
        message = json.loads(rest[:int(length)])
        assert message["id"] == request_id and isinstance(message["result"], list)


def test_server_errors_are_remote_errors(tem_twin):
    client = TemClient(tem_twin.host, tem_twin.port, timeout=20)
    with pytest.raises(RemoteError, match="spectrometer"):
        client.acquire_spectrum("SE")
    with pytest.raises(RemoteError, match="not implemented"):
        client._call("self_destruct")
    with pytest.raises(RemoteError, match="bad parameters"):
        client._call("set_beam_position", {"x": 1})
    assert client.get_detectors()  # the connection survives error replies


def test_reply_is_framed_by_its_declared_length_not_by_a_trailing_comma():
    values = list(range(20000))
    reply = netstring({"jsonrpc": "2.0", "id": 2, "result": [values, [20000], "int64"]})
    cut = reply.index(b",", 1000) + 1  # the first chunk ends with a comma inside the array
    peer = ScriptedPeer([no_capabilities(), [reply[:cut], reply[cut:]]])
    client = TemClient("127.0.0.1", peer.port, timeout=5)
    assert client.server_info is None
    assert np.array_equal(client.acquire_image("scan"), np.arange(20000))


@pytest.mark.parametrize("bad", [b"abc:{},", b"5:{\"a\":1}X", b"99999999999999:{}"])
def test_malformed_netstring_is_a_protocol_error(bad):
    peer = ScriptedPeer([no_capabilities(), [bad]])
    client = TemClient("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(ProtocolError, match="malformed|limit"):
        client.get_stage()


def test_reply_cut_off_mid_message_is_unreachable():
    peer = ScriptedPeer([no_capabilities(), [b"100:{\"jsonrpc\":", None]])
    client = TemClient("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(InstrumentUnreachable, match="incomplete"):
        client.get_stage()


def test_json_rpc_error_object_is_a_remote_error():
    error = {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}}
    peer = ScriptedPeer([no_capabilities(), [netstring(error)]])
    client = TemClient("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(RemoteError, match="Method not found"):
        client.get_vacuum()


def test_non_json_reply_is_a_protocol_error():
    peer = ScriptedPeer([no_capabilities(), [b"5:hello,"]])
    client = TemClient("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        client.get_vacuum()



def test_server_answers_a_malformed_request_with_an_error_and_closes(tem_twin):
    with socket.create_connection((tem_twin.host, tem_twin.port), timeout=10) as sock:
        sock.sendall(b"8:{\"id\":1}X")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    length, _, rest = reply.partition(b":")
    message = json.loads(rest[:int(length)])
    assert message["id"] is None and "Invalid netstring" in message["error"]


def test_twin_server_answers_json_nested_200000_deep_with_an_error_and_stays_up(tem_twin):
    deep = b"[" * 200_000 + b"]" * 200_000
    with socket.create_connection((tem_twin.host, tem_twin.port), timeout=10) as sock:
        sock.sendall(b"%d:%s," % (len(deep), deep))
        reply = b""
        while b":" not in reply:
            reply += sock.recv(4096)
        length, _, rest = reply.partition(b":")
        while len(rest) < int(length) + 1:
            rest += sock.recv(4096)
        message = json.loads(rest[:int(length)])
        assert message["id"] is None and "nested too deeply" in message["error"]
        sock.sendall(netstring({"jsonrpc": "2.0", "id": 2, "method": "get_detectors",
                                "params": {}}))
        assert b"result" in sock.recv(4096)           # the same connection goes on
    assert TemClient(tem_twin.host, tem_twin.port, timeout=20).get_detectors()
    assert tem_twin.process.poll() is None
