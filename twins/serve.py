"""`python -m twins.serve` (the same entry as `micagent twin serve`): the twin, with its
faults and any real images as specimen tiles, behind one of the servers (twins/dtm_server.py,
twins/tem_server.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from instruments.devices.microscope import Microscope
from instruments.utils.redaction import install_log_redaction
from twins.dtm_server import DEFAULT_PORT as DTM_PORT
from twins.dtm_server import DTMServer
from twins.faults import FaultSpec
from twins.tem_server import DEFAULT_PORT as TEM_PORT
from twins.tem_server import TemServer

READY_PREFIX = "READY"


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
               tiles: Sequence[str] = ()) -> None:
    """Serve a twin over `protocol` ("dtm" or "tem") until interrupted.

    Port 0 picks a free port. Once listening, `announce` gets one line
    `READY <protocol> <address>` naming the bound address. A dtm server registers files only
    under `data_root` (default: `default_data_root(data)`).
    """
    install_log_redaction()
    spec = FaultSpec.parse(faults)
    twin = make_twin(seed, spec, tiles)
    if protocol == "dtm":
        server = DTMServer(twin, host=host, port=DTM_PORT if port is None else port,
                           faults=spec, data_root=data_root or default_data_root(data))
        if data:
            server.preload(data)
    elif protocol == "tem":
        server = TemServer(twin, host=host, port=TEM_PORT if port is None else port,
                           faults=spec)
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
    args = parser.parse_args(argv)
    run_server(args.protocol, args.host, args.port, args.seed, args.faults, args.data,
               announce=lambda line: print(line, flush=True), data_root=args.data_root,
               tiles=args.tile)


if __name__ == "__main__":
    main(sys.argv[1:])
