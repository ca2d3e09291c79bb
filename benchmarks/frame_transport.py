"""Frame transport: MB/s for one 1024x1024 float32 frame, measured in one run over
(a) DTMicroscope's `(array.tolist(), shape, dtype)` Pyro5 path, (b) our binary path (raw
bytes over Pyro5's msgpack serializer), (c) a raw loopback TCP socket (the ceiling), and the
TEM netstring JSON-RPC protocol (instruments/devices/rpc_server.py + TemClient): its list path
(`[list, shape, dtype]`, what DTMicroscope-style clients get) and its negotiated binary path.

(a) and (b) use exactly the wire forms and decoders of twins/dtm_server.py and
instruments/devices/dtm_client.py (`wire_arrays.to_tuple`/`to_binary`, `from_tuple`/`from_binary`)
on a Pyro5 daemon in another process serving one fixed frame, so only the transport
differs. A second block times the whole DTMicroscopeClient against a `twins.serve` dtm
server with the frame registered from an NSID file (SciFiReaders reads it back as float64,
as DTMicroscope's own server would serve it, so that frame is 8 MB).
Targets: binary >= 0.5 x raw socket and >= 100 x the list path.

    python -m benchmarks.frame_transport [--repeats 20] [--list-repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import Pyro5.api

from instruments.devices.dtm_client import DTMicroscopeClient
from instruments.devices.rpc_server import RpcServer
from instruments.devices.tem_client import TemClient
from instruments.devices.wire_arrays import from_binary, from_tuple, to_binary, to_tuple
from instruments.utils.child_python import module_command

SIDE = 1024


def write_frame_file(path: Path, frame: np.ndarray) -> None:
    import h5py
    import sidpy
    from pyNSID.io.hdf_io import write_nsid_dataset

    dataset = sidpy.Dataset.from_array(frame, title="frame")
    dataset.data_type = "IMAGE"
    with h5py.File(path, "w") as h5:
        write_nsid_dataset(dataset, h5.create_group("Measurement_000").create_group(
            "Channel_000"), main_data_name="Channel_000")


def start_dtm_server(data: Path) -> tuple[subprocess.Popen, str, int]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        module_command("twins.serve", "--protocol", "dtm", "--port", "0", "--data", str(data)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("READY "):
            host, port = line.split()[2].rsplit("@", 1)[1].rsplit(":", 1)
            return process, host, int(port)
    raise RuntimeError("dtm server did not start")


@Pyro5.api.expose
class FrameSource:
    """One fixed frame in the two wire forms of the dtm server."""

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame

    def get_tuple(self):
        return to_tuple(self.frame)

    def get_bytes(self):
        return to_binary(self.frame)


def pyro_frame_server(frame: np.ndarray, ready) -> None:
    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    ready.send(str(daemon.register(FrameSource(frame), objectId="frames")))
    daemon.requestLoop()


def time_pyro_paths(frame: np.ndarray, repeats: int, list_repeats: int
                    ) -> tuple[float, np.ndarray, float, np.ndarray]:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=pyro_frame_server, args=(frame, child),
                                     daemon=True)
    server.start()
    uri = parent.recv()
    try:
        listed = Pyro5.api.Proxy(uri)  # DTMicroscope's default serializer (serpent)
        binary = Pyro5.api.Proxy(uri)
        binary._pyroSerializer = "msgpack"
        t_list, a = time_calls(lambda: from_tuple(listed.get_tuple()), list_repeats)
        t_binary, b = time_calls(lambda: from_binary(binary.get_bytes()), repeats)
    finally:
        server.kill()
        server.join()
    return t_list, a, t_binary, b


class TemFrameSource:
    """One fixed frame behind the TEM protocol's acquire_image."""

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame

    def get_capabilities(self) -> dict:
        return {"server": "benchmark", "binary_transport": "netstring-buffers-1"}

    def acquire_image(self, device: str) -> np.ndarray:
        return self.frame


def tem_frame_server(frame: np.ndarray, ready) -> None:
    server = RpcServer(TemFrameSource(frame), "127.0.0.1", 0)
    ready.send(server.address)
    server.serve_forever()


def time_tem_paths(frame: np.ndarray, repeats: int, list_repeats: int
                   ) -> tuple[float, np.ndarray, float, np.ndarray]:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=tem_frame_server, args=(frame, child), daemon=True)
    server.start()
    host, port = parent.recv().rsplit(":", 1)
    try:
        listed = TemClient(host, int(port), timeout=120, binary=False)
        binary = TemClient(host, int(port), timeout=120)
        assert binary.binary and not listed.binary
        t_list, a = time_calls(lambda: listed.acquire_image("any"), list_repeats)
        t_binary, b = time_calls(lambda: binary.acquire_image("any"), repeats)
    finally:
        server.kill()
        server.join()
    return t_list, a, t_binary, b


def raw_socket_server(listener: socket.socket, payload: bytes, repeats: int) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = struct.pack("!Q", len(payload))
        for _ in range(repeats):
            if not conn.recv(1):
                return
            conn.sendall(header + payload)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("raw socket peer closed")
        got += n
    return buffer


def time_raw_socket(frame: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = multiprocessing.Process(target=raw_socket_server,
                                     args=(listener, frame.tobytes(), repeats + 1))
    server.start()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def fetch() -> np.ndarray:
            sock.sendall(b"g")
            (size,) = struct.unpack("!Q", _recv_exactly(sock, 8))
            return np.frombuffer(_recv_exactly(sock, size), np.float32).reshape(SIDE, SIDE)

        fetch()  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            received = fetch()
        elapsed = time.perf_counter() - started
    server.join(timeout=10)
    listener.close()
    return elapsed / repeats, received


def time_calls(fetch, repeats: int) -> tuple[float, np.ndarray]:
    fetch()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        received = fetch()
    return (time.perf_counter() - started) / repeats, received


def report(title: str, megabytes: float, timings: dict[str, float]) -> None:
    rates = {name: megabytes / t for name, t in timings.items()}
    print(title)
    labels = {"list": "(a) (list, shape, dtype) Pyro5 path",
              "binary": "(b) binary Pyro5/msgpack path      ",
              "raw": "(c) raw loopback socket            ",
              "tem_list": "TEM netstring list path           ",
              "tem_binary": "TEM netstring binary path         "}
    for name, rate in rates.items():
        print(f"  {labels[name]} : {rate:9.2f} MB/s  ({timings[name] * 1e3:8.1f} ms/frame)")
    binary = "tem_binary" if "tem_binary" in rates else "binary"
    listed = "tem_list" if "tem_list" in rates else "list"
    if "raw" in rates:
        ratio = rates[binary] / rates["raw"]
        print(f"  binary / raw socket = {ratio:.2f}  (target >= 0.5: "
              f"{'met' if ratio >= 0.5 else 'NOT met'})")
    ratio = rates[binary] / rates[listed]
    print(f"  binary / list path  = {ratio:.0f}x  (target >= 100x: "
          f"{'met' if ratio >= 100 else 'NOT met'})")


def check(name: str, received: np.ndarray, expected: np.ndarray) -> None:
    if received.dtype != expected.dtype or not np.array_equal(received, expected):
        raise SystemExit(f"{name} path returned a different frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--list-repeats", type=int, default=3)
    args = parser.parse_args()

    frame = np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32)
    t_list, a, t_binary, b = time_pyro_paths(frame, args.repeats, args.list_repeats)
    t_tem_list, d, t_tem_binary, e = time_tem_paths(frame, args.repeats, args.list_repeats)
    t_raw, c = time_raw_socket(frame, args.repeats)
    for name, received in (("list", a), ("binary", b), ("raw", c), ("tem list", d),
                           ("tem binary", e)):
        check(name, received, frame)
    print(f"frame {SIDE}x{SIDE} float32 ({frame.nbytes / 1e6:.2f} MB); repeats: list "
          f"{args.list_repeats}, binary/raw {args.repeats}")
    report("Pyro5 transport (same frame, same process layout):", frame.nbytes / 1e6,
           {"list": t_list, "binary": t_binary, "raw": t_raw})
    report("TEM netstring JSON-RPC transport (same frame, same run):", frame.nbytes / 1e6,
           {"tem_list": t_tem_list, "tem_binary": t_tem_binary, "raw": t_raw})

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame.h5"
        write_frame_file(path, frame)
        process, host, port = start_dtm_server(path)
        try:
            listed = DTMicroscopeClient(host, port, timeout=120, binary=False)
            binary = DTMicroscopeClient(host, port, timeout=120, binary=True)
            t_list, a = time_calls(listed.get_overview_image, args.list_repeats)
            t_binary, b = time_calls(binary.get_overview_image, args.repeats)
        finally:
            process.kill()
            process.wait()
    check("client list", a, frame.astype(np.float64))
    check("client binary", b, frame.astype(np.float64))
    report(f"DTMicroscopeClient.get_overview_image against `twins.serve --protocol dtm` "
           f"(NSID frame read back as {a.dtype}, {a.nbytes / 1e6:.2f} MB):", a.nbytes / 1e6,
           {"list": t_list, "binary": t_binary})


if __name__ == "__main__":
    main()
