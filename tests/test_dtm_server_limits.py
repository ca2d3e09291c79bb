"""`micagent twin serve --protocol dtm` under a hostile but fair client, over loopback: idle
connections do not starve good calls, silent ones are dropped, and register_data opens only
files under the data root, without saying whether a path outside it exists; it opens them in
place (no copy), refuses files over --max-data-bytes, runs at most MAX_REGISTRATIONS at once,
and its errors never name the server's folders."""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import Pyro5.api
import Pyro5.errors
import pytest
from nsid_files import write_spectral_nsid
from twin_process import served_twin

from twins import dtm_server
from twins.dtm_server import (
    HANDSHAKE_TIMEOUT_S,
    MAX_REGISTRATIONS,
    DTMicroscopeService,
    resolve_data_source,
)

pytestmark = pytest.mark.slow

GIB = 1 << 30


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


def _sparse(path: Path, size: int) -> Path:
    """A sparse file of `size` bytes: an NSID file, its tail unwritten (HDF5 reads past
    nothing it needs)."""
    write_spectral_nsid(path)
    os.truncate(path, size)
    return path


def _open_files(pid: int) -> list[str]:
    """The paths a process holds open (Linux /proc)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:                   # closed meanwhile
            pass
    return found


def test_a_large_sparse_file_is_served_in_place_never_copied(tmp_path: Path) -> None:
    root, scratch = tmp_path / "root", tmp_path / "server_tmp"
    root.mkdir()
    scratch.mkdir()
    _sparse(root / "big.h5", 3 * GIB)
    env = {**os.environ, "TMPDIR": str(scratch)}
    with served_twin("dtm", data_root=str(root), env=env,
                     extra=("--max-data-bytes", str(4 * GIB))) as served:
        def register(_: int) -> str:
            with _proxy(served) as proxy:
                proxy.initialize_microscope("STEM")
                try:
                    proxy.register_data("big.h5")
                except RuntimeError as exc:
                    return str(exc)
                return "ok"

        with ThreadPoolExecutor(6) as pool:
            said = list(pool.map(register, range(6)))
        assert "ok" in said and all(s == "ok" or "busy" in s for s in said)
        with _proxy(served) as proxy:
            proxy.initialize_microscope("STEM")
            proxy.register_data("big.h5")
            assert tuple(proxy.get_overview_image()[1]) == (128, 128)
            files = _open_files(served.process.pid)
    assert str((root / "big.h5").resolve()) in files     # read where it lies
    assert not [f for f in files if f.startswith(str(scratch))]   # no copy, not even unlinked
    assert list(scratch.iterdir()) == []
    assert (root / "big.h5").stat().st_blocks * 512 < 16 << 20   # and it is still sparse


def test_files_over_the_limit_or_unreadable_are_refused_without_server_paths(
        dtm, root: Path) -> None:
    _sparse(root / "huge.h5", 2 * GIB)                   # the default limit is 1 GiB
    (root / "junk.h5").write_bytes(b"not hdf5" * 100)
    with _proxy(dtm) as proxy:
        proxy.initialize_microscope("STEM")
        said = {}
        for name in ("huge.h5", "junk.h5", "missing.h5", str(root / "missing.h5")):
            with pytest.raises(Exception) as caught:
                proxy.register_data(name)
            said[name] = str(caught.value)
    assert "huge.h5 is 2147483648 bytes, over this server's limit" in said["huge.h5"]
    assert "junk.h5 is not a readable NSID HDF5 file" in said["junk.h5"]
    assert "no such data file: missing.h5" in said["missing.h5"]
    for name, text in said.items():
        hidden = text.replace(name, "NAME")              # the client's own words may stay
        assert str(root) not in hidden and os.path.realpath(root) not in hidden, text


def test_at_most_max_registrations_open_files_at_once(root: Path, monkeypatch) -> None:
    inside, release = threading.Semaphore(0), threading.Event()
    opened = dtm_server._Dataset

    def slow(*args, **kwargs):
        inside.release()
        release.wait(30)
        return opened(*args, **kwargs)

    monkeypatch.setattr(dtm_server, "_Dataset", slow)
    service = DTMicroscopeService(None, data_root=root)
    service._initialize("STEM")
    with ThreadPoolExecutor(MAX_REGISTRATIONS) as pool:
        running = [pool.submit(service._register, "inside.h5")
                   for _ in range(MAX_REGISTRATIONS)]
        for _ in running:
            assert inside.acquire(timeout=30)
        with pytest.raises(RuntimeError, match="busy"):
            service._register("inside.h5")
        release.set()
        for future in running:
            future.result(timeout=30)
    service._register("inside.h5")                       # free again
    service._release()
