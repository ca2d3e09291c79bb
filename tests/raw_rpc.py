"""Raw netstring JSON-RPC over a plain socket, for tests that send what no client would."""

from __future__ import annotations

import json
import socket

from instruments.devices.netstring import NetstringReader
from instruments.devices.netstring import encode as netstring

__all__ = ["netstring", "read_reply"]


def read_reply(sock: socket.socket) -> dict:
    """The next whole reply on `sock`, decoded."""
    return json.loads(NetstringReader(sock, "test socket").read())
