"""`python -m twins.serve` (the same entry as `micagent twin serve`): the twin, with its
faults and any real images as specimen tiles, behind one of the servers (twins/dtm_server.py,
twins/tem_server.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from instruments.devices.control_policy import add_arguments, parse_allow
from instruments.devices.microscope import Microscope
from instruments.utils.redaction import install_log_redaction
from twins.dtm_server import DEFAULT_PORT as DTM_PORT
from twins.dtm_server import MAX_DATA_BYTES, DTMServer
from twins.faults import FaultSpec
from twins.tem_server import DEFAULT_PORT as TEM_PORT
from twins.tem_server import TemServer, twin_policy

READY_PREFIX = "READY"


@dataclass(frozen=True)
class ServerOptions:
    """tem: the control allow-list (None: the default), the stage limit (m; None: the twin's
    travel), and the beam the twin's console holds at start (A, eV; None: the twin's default).
    dtm: the largest file register_data opens (bytes)."""

    allow_control: list[str] | None = None
    stage_limit: float | None = None
    beam_current: float | None = None
    beam_energy: float | None = None
    max_data_bytes: int = MAX_DATA_BYTES

    def console(self, twin: Microscope) -> None:
        """Set the beam as an operator at the console would (no allow-list: not a client)."""
        beam = {k: v for k, v in (("beam_current", self.beam_current),
                                  ("beam_energy", self.beam_energy)) if v is not None}
        if beam:
            twin.set_imaging(replace(twin.status().settings, **beam))


def make_twin(seed: int, faults: FaultSpec, tiles: Sequence[str] = ()) -> Microscope:
    """The served instrument: a TwinMicroscope with the frame/stage faults of the spec, and
    the images of `tiles` (PNG/TIFF/NSID files) in the last cells of its specimen."""
    from twins.microscope import TwinMicroscope
    from twins.real_tiles import specimen_with_real_tiles

    specimen = specimen_with_real_tiles(list(tiles), seed=seed) if tiles else None
    return TwinMicroscope(seed=seed, specimen=specimen, faults=faults)


def default_data_root(data: str | None) -> str:
    """Where a dtm server's register_data may read: the folder of the file given at start,
    else the folder the server was started in."""
    return os.path.dirname(os.path.abspath(data)) if data else os.getcwd()


def run_server(protocol: str, host: str, port: int | None, seed: int = 0,
               faults: str | None = None, data: str | None = None,
               announce: Callable[[str], None] = print, data_root: str | None = None,
               tiles: Sequence[str] = (), options: ServerOptions | None = None) -> None:
    """Serve a twin over `protocol` ("dtm" or "tem") until interrupted.

    Port 0 picks a free port. Once listening, `announce` gets one line
    `READY <protocol> <address>` naming the bound address. A dtm server registers files only
    under `data_root` (default: `default_data_root(data)`).
    """
    install_log_redaction()
    options = options or ServerOptions()
    spec = FaultSpec.parse(faults)
    twin = make_twin(seed, spec, tiles)
    options.console(twin)
    if protocol == "dtm":
        server = DTMServer(twin, host=host, port=DTM_PORT if port is None else port,
                           faults=spec, data_root=data_root or default_data_root(data),
                           max_data_bytes=options.max_data_bytes)
        if data:
            server.preload(data)
    elif protocol == "tem":
        server = TemServer(twin, host=host, port=TEM_PORT if port is None else port,
                           faults=spec, policy=twin_policy(twin, options.allow_control,
                                                           options.stage_limit))
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: dtm, tem")
    announce(f"{READY_PREFIX} {protocol} {server.address}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m twins.serve", description=__doc__)
    parser.add_argument("--protocol", choices=("dtm", "tem"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="")
    parser.add_argument("--data", default=None, help="NSID HDF5 file to register (dtm)")
    parser.add_argument("--data-root", default=None,
                        help="folder register_data may read (dtm; default: that of --data, "
                             "else the working folder)")
    parser.add_argument("--tile", action="append", default=[],
                        help="real image (PNG/TIFF/NSID) as a specimen tile (repeatable)")
    parser.add_argument("--max-data-bytes", type=int, default=MAX_DATA_BYTES,
                        help="dtm: largest file register_data opens")
    parser.add_argument("--stage-limit", type=float, default=None,
                        help="tem: stage travel clients may ask for, +/- m (default: the "
                             "twin's travel)")
    parser.add_argument("--beam-current", type=float, default=None,
                        help="tem/dtm: beam current the twin's console holds at start (A)")
    parser.add_argument("--beam-energy", type=float, default=None,
                        help="tem/dtm: beam energy the twin's console holds at start (eV)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        parse_allow(args.allow_control or [])
    except ValueError as exc:
        parser.error(str(exc))
    options = ServerOptions(args.allow_control, args.stage_limit, args.beam_current,
                            args.beam_energy, args.max_data_bytes)
    run_server(args.protocol, args.host, args.port, args.seed, args.faults, args.data,
               announce=lambda line: print(line, flush=True), data_root=args.data_root,
               tiles=args.tile, options=options)


if __name__ == "__main__":
    main(sys.argv[1:])
