"""Netstring framing (`<len>:<payload>,`) over a stream socket.

Each message is framed by its declared length, never by looking for a trailing comma:
JSON payloads are full of commas, so a reader that stops at the first buffer ending in
`,` truncates large arrays. Malformed frames raise `ProtocolError`; socket timeouts raise
`InstrumentTimeout`; a peer that closes mid-message raises `InstrumentUnreachable`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from instruments.devices.errors import InstrumentTimeout, InstrumentUnreachable, ProtocolError

MAX_LENGTH_DIGITS = 12
DEFAULT_MAX_MESSAGE = 1 << 30
_CHUNK = 1 << 20
_DIRECT = 1 << 16   # payloads from this size are received straight into their own buffer


def encode(payload: bytes) -> bytes:
    """Frame `payload` as a netstring."""
    return b"%d:%s," % (len(payload), payload)


class NetstringReader:
    """Reads whole netstrings from a socket, keeping bytes that belong to the next one."""

    def __init__(self, sock: socket.socket, where: str = "",
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.sock = sock
        self.where = where
        self.max_message = max_message
        self._buffer = bytearray()

    def _recv(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except TimeoutError as exc:
            raise InstrumentTimeout(f"no complete message within {self.sock.gettimeout()} s "
                                    "(the socket timeout)", self.where) from exc
        except OSError as exc:
            raise InstrumentUnreachable(f"connection failed while reading: {exc}",
                                        self.where) from exc

    def _fill(self, at_boundary: bool) -> bool:
        """Append one chunk from the socket. False on a clean EOF between messages."""
        chunk = self._recv(self.sock.recv, _CHUNK)
        if not chunk:
            if at_boundary and not self._buffer:
                return False
            raise InstrumentUnreachable(
                f"peer closed the connection inside a netstring ({len(self._buffer)} bytes "
                "of an incomplete message received)", self.where)
        self._buffer += chunk
        return True

    def _read_direct(self, start: int, length: int) -> bytearray:
        """A large payload (starting at buffer offset `start`) received into its own buffer
        with `recv_into`, so its bytes are copied once, not per chunk."""
        out = bytearray(length + 1)                      # payload and the closing ','
        have = min(len(self._buffer) - start, length + 1)
        out[:have] = self._buffer[start:start + have]
        del self._buffer[:start + have]
        view, got = memoryview(out), have
        while got < length + 1:
            n = self._recv(self.sock.recv_into, view[got:])
            if n == 0:
                raise InstrumentUnreachable(
                    f"peer closed the connection inside a netstring ({got} of {length + 1} "
                    "bytes received)", self.where)
            got += n
        view.release()
        if out[length] != ord(","):
            raise ProtocolError(f"malformed netstring: expected ',' after {length} payload "
                                f"bytes, got {bytes(out[length:])!r}", self.where)
        del out[length:]
        return out

    def read(self) -> bytes | bytearray | None:
        """Return the next payload (bytes-like), or None if the peer closed cleanly between
        messages."""
        while (colon := self._buffer.find(b":")) < 0:
            if self._buffer and (not self._buffer.isdigit()
                                 or len(self._buffer) > MAX_LENGTH_DIGITS):
                raise ProtocolError(
                    f"malformed netstring: length prefix {bytes(self._buffer[:20])!r}",
                    self.where)
            if not self._fill(at_boundary=True):
                return None
        head = bytes(self._buffer[:colon])
        if not head.isdigit() or len(head) > MAX_LENGTH_DIGITS:
            raise ProtocolError(f"malformed netstring: length prefix {head[:20]!r}", self.where)
        length = int(head)
        if length > self.max_message:
            raise ProtocolError(
                f"netstring declares {length} bytes, over the limit of {self.max_message}",
                self.where)
        end = colon + 1 + length
        if length >= _DIRECT and len(self._buffer) < end + 1:
            return self._read_direct(colon + 1, length)
        while len(self._buffer) < end + 1:
            self._fill(at_boundary=False)
        if self._buffer[end:end + 1] != b",":
            raise ProtocolError(
                f"malformed netstring: expected ',' after {length} payload bytes, got "
                f"{bytes(self._buffer[end:end + 1])!r}", self.where)
        payload = bytes(self._buffer[colon + 1:end])
        del self._buffer[:end + 1]
        return payload
