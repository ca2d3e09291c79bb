"""`micagent twin serve --protocol dtm` under a hostile but fair client, over loopback: idle
connections do not starve good calls, silent ones are dropped, and register_data opens only
files under the data root, without saying whether a path outside it exists."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import Pyro5.api
import Pyro5.errors
import pytest
from nsid_files import write_spectral_nsid
from twin_process import served_twin

from twins.dtm_server import HANDSHAKE_TIMEOUT_S, resolve_data_source


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data_root")
    write_spectral_nsid(folder / "inside.h5")
    return folder


@pytest.fixture(scope="module")
def dtm(root):
    with served_twin("dtm", seed=5, data_root=str(root)) as served:
        yield served


def _proxy(dtm) -> Pyro5.api.Proxy:
    proxy = Pyro5.api.Proxy(f"PYRO:microscope.server@{dtm.host}:{dtm.port}")
    proxy._pyroTimeout = 10
    return proxy


def test_a_good_call_answers_while_100_idle_connections_are_open(dtm) -> None:
    idle = [socket.create_connection((dtm.host, dtm.port), timeout=5) for _ in range(100)]
    try:
        with _proxy(dtm) as proxy:                             # 10 s to answer, or fail
            assert proxy.get_capabilities()["server"] == "micagent-dtm"
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_that_never_says_hello_is_dropped(dtm) -> None:
    with socket.create_connection((dtm.host, dtm.port), timeout=HANDSHAKE_TIMEOUT_S + 10) as s:
        said = b""
        while chunk := s.recv(1024):      # a refusal, then closed (else recv times out)
            said += chunk
        assert b"timeout" in said


def _refusal(dtm, path: str) -> str:
    with _proxy(dtm) as proxy:
        proxy.initialize_microscope("STEM")
        with pytest.raises(PermissionError) as caught:
            proxy.register_data(path)
    return str(caught.value)


def test_register_data_outside_the_root_is_refused_alike_whether_or_not_it_exists(
        dtm, root: Path, tmp_path: Path) -> None:
    existing = tmp_path / "elsewhere.h5"
    write_spectral_nsid(existing)
    missing = tmp_path / "missing.h5"
    said = {name: _refusal(dtm, str(path)).replace(str(path), "PATH")
            for name, path in (("existing", existing), ("missing", missing))}
    assert said["existing"] == said["missing"]
    assert "outside the server's data root" in said["existing"]
    assert "outside" in _refusal(dtm, "../" + existing.name)
    (root / "link.h5").symlink_to(existing)
    assert "outside" in _refusal(dtm, str(root / "link.h5"))


def test_register_data_inside_the_root_works_by_absolute_or_relative_path(dtm, root) -> None:
    with _proxy(dtm) as proxy:
        proxy.initialize_microscope("STEM")
        proxy.register_data(str(root / "inside.h5"))
        proxy.register_data("inside.h5")
        assert proxy.get_dataset_info()[0][1] == ["Channel_000", "Channel_001"]
        with pytest.raises(Exception, match="no such data file"):
            proxy.register_data("not_here.h5")


def test_a_server_without_a_root_registers_nothing(tmp_path: Path) -> None:
    with pytest.raises(PermissionError, match="no data files"):
        resolve_data_source(None, str(tmp_path / "x.h5"))
    assert resolve_data_source(str(tmp_path), "a/../b.h5") == os.path.realpath(tmp_path / "b.h5")
