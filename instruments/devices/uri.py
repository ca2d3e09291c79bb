"""Instrument URIs: `twin`, `dtm://HOST:PORT`, `tem://HOST:PORT`, `replay://FILE.h5`.

`open_instrument` turns one into a connected Microscope. `twin` comes from the caller's
`local_factories` (the instrument layer does not import the twins); a missing port takes
the protocol's default (dtm 9091, tem 9093). A `dtm://` URI may name an NSID file to
register on a DTMicroscope STEM server: `dtm://HOST:PORT?data=/path/file.h5`; either network
scheme takes the seconds a call may wait for its reply: `tem://HOST:PORT?timeout=2.5`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from instruments.devices.errors import UnknownInstrument
from instruments.devices.microscope import Microscope

SCHEMES = ("twin", "dtm", "tem", "replay")
DEFAULT_PORTS = {"dtm": 9091, "tem": 9093}


def _unknown(uri: str, why: str) -> UnknownInstrument:
    return UnknownInstrument(
        f"{why}; known forms: twin, dtm://HOST:PORT, tem://HOST:PORT, replay://FILE.h5",
        where=uri)


def parse_address(uri: str) -> tuple[str, str, int, dict[str, list[str]]]:
    """(scheme, host, port, query) of a dtm:// or tem:// URI; UnknownInstrument if bad."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _unknown(uri, f"scheme {parts.scheme!r} is not a network instrument scheme")
    try:
        port = parts.port
    except ValueError as exc:
        raise _unknown(uri, f"malformed port in {parts.netloc!r}") from exc
    host = parts.hostname
    if not host or parts.path not in ("", "/"):
        raise _unknown(uri, "expected HOST:PORT after the scheme")
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme], parse_qs(
        parts.query)


def open_instrument(uri: str,
                    local_factories: dict[str, Callable[[], Microscope]] | None = None,
                    timeout: float = 10.0) -> Microscope:
    """Open the instrument named by `uri` (see module docstring)."""
    text = uri.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else text.lower()
    if scheme == "twin":
        if text.lower() not in ("twin", "twin://"):
            raise _unknown(uri, "the embedded twin takes no address")
        factory = (local_factories or {}).get("twin")
        if factory is None:
            raise _unknown(uri, "no local factory for the embedded twin was given")
        return factory()
    if scheme == "replay":
        path = text[len("replay://"):] if "://" in text else ""
        if not path:
            raise _unknown(uri, "replay:// needs a session file path")
        from instruments.devices.replay import ReplayMicroscope

        return ReplayMicroscope(path)
    if scheme not in SCHEMES:
        raise _unknown(uri, f"unknown instrument scheme {scheme!r}")
    kind, host, port, query = parse_address(text)
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][0])
        except ValueError:
            timeout = 0.0
        if not timeout > 0:
            raise _unknown(uri, f"timeout must be a positive number of seconds, got "
                                f"{query['timeout'][0]!r}")
    if kind == "tem":
        from instruments.devices.tem_client import TemClient

        return TemClient(host, port, timeout=timeout)
    from instruments.devices.dtm_client import DTMicroscopeClient

    client = DTMicroscopeClient(host, port, timeout=timeout)
    if "data" in query:
        client.initialize_microscope("STEM")
        client.register_data(query["data"][0])
    return client
