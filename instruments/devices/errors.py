"""Typed errors of the instrument layer. Each names what failed and where.

`MicagentError` is the one base: the instrument errors below and the session-file errors
(instruments/session_file/layout.py, export.py, hdf5_probe.py) derive from it, so a caller
that must stop on any of them catches one class.
"""

from __future__ import annotations


class MicagentError(Exception):
    """Base of every typed error of the instrument layer; `where` names the instrument,
    endpoint or file."""

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        super().__init__(f"{message} [{where}]" if where else message)


class InstrumentError(MicagentError):
    """Base of every instrument failure; `where` names the instrument/endpoint."""


class InstrumentUnreachable(InstrumentError):
    """The instrument or its server cannot be reached (refused, dropped, closed)."""


class InstrumentTimeout(InstrumentError):
    """A call did not complete within its timeout."""


class ProtocolError(InstrumentError):
    """The peer answered, but not in the protocol's form (malformed netstring, bad reply)."""


class RemoteError(InstrumentError):
    """The server executed the call and reported an error."""


class BadFrame(InstrumentError):
    """An acquired frame is unusable: non-finite, wrong shape/dtype, saturated or empty;
    `fault` names which (nan_frame, inf_frame, wrong_shape, bad_dtype, empty_frame,
    saturated_frame, or bad_frame when unknown)."""

    def __init__(self, message: str, where: str = "", fault: str = "bad_frame") -> None:
        self.fault = fault
        super().__init__(message, where)


class SafetyRefused(InstrumentError):
    """A request falls outside the session's safety envelope and was not sent to hardware."""


class ApprovalRequired(SafetyRefused):
    """A request is inside the hard limits but outside the free zone: it needs a recorded
    human approval (see `GuardedMicroscope.grant`) before it may reach the hardware."""

    def __init__(self, message: str, request: dict, where: str = "") -> None:
        self.request = request
        super().__init__(message, where)


class UnknownInstrument(InstrumentError):
    """An instrument URI with an unknown scheme or malformed address."""
