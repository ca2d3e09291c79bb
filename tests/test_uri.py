"""Instrument URIs: which scheme opens which client, and typed errors for bad ones."""

from __future__ import annotations

import socket

import pytest

from instruments.devices.errors import InstrumentTimeout, InstrumentUnreachable, UnknownInstrument
from instruments.devices.uri import open_instrument, parse_address


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("uri", ["ftp://host:21", "pyro://h:1", "microscope", "dtmx://h:1"])
def test_unknown_scheme_names_the_uri_and_the_known_schemes(uri):
    with pytest.raises(UnknownInstrument) as caught:
        open_instrument(uri)
    assert caught.value.where == uri
    assert "dtm://HOST:PORT" in str(caught.value) and "replay://FILE.h5" in str(caught.value)


@pytest.mark.parametrize("uri", ["dtm://host:port", "tem://:9093", "dtm://h:99999",
                                 "tem://h:9093/extra", "replay://", "twin://somewhere"])
def test_malformed_address_is_an_unknown_instrument(uri):
    with pytest.raises(UnknownInstrument):
        open_instrument(uri, local_factories={"twin": object})


def test_twin_comes_from_the_local_factory():
    made = []
    assert open_instrument("twin", {"twin": lambda: made.append(1) or "the twin"}) == "the twin"
    assert made == [1]
    with pytest.raises(UnknownInstrument, match="no local factory"):
        open_instrument("twin")


def test_addresses_parse_with_protocol_default_ports():
    assert parse_address("dtm://10.0.0.5:9000")[:3] == ("dtm", "10.0.0.5", 9000)
    assert parse_address("dtm://localhost")[:3] == ("dtm", "localhost", 9091)
    assert parse_address("TEM://127.0.0.1")[:3] == ("tem", "127.0.0.1", 9093)
    assert parse_address("dtm://h:1?data=/d/x.h5")[3] == {"data": ["/d/x.h5"]}


@pytest.mark.parametrize("scheme", ["dtm", "tem"])
def test_network_schemes_open_their_client(scheme):
    port = closed_port()
    with pytest.raises(InstrumentUnreachable) as caught:
        open_instrument(f"{scheme}://127.0.0.1:{port}", timeout=2)
    assert str(port) in caught.value.where


def test_replay_serves_the_frames_of_a_stored_file(shared_nsid_file):
    instrument = open_instrument(f"replay://{shared_nsid_file}")
    assert instrument.acquire().shape == (256, 256)
    instrument.close()


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_a_bad_timeout_in_the_uri_is_an_unknown_instrument(timeout):
    with pytest.raises(UnknownInstrument, match="timeout must be a positive"):
        open_instrument(f"tem://127.0.0.1:{closed_port()}?timeout={timeout}")


@pytest.mark.parametrize("scheme", ["dtm", "tem"])
def test_the_uri_timeout_bounds_every_call(scheme):
    """A server that accepts and never answers: the client gives up after the URI's timeout
    (its error names the timeout it used)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(InstrumentTimeout, match=r"within 0\.5 s"):
            open_instrument(f"{scheme}://127.0.0.1:{silent.getsockname()[1]}?timeout=0.5")
