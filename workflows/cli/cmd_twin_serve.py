"""`micagent twin serve`: a twin microscope behind DTMicroscope's Pyro5 STEM protocol (dtm)
or its netstring JSON-RPC TEM protocol (tem)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from instruments.session_file.hdf5_probe import check_metadata_finishes
from twins.dtm_server import MAX_DATA_BYTES
from twins.faults import FaultSpec, FaultSpecError
from twins.serve import ServerOptions, run_server
from workflows.terminal import fail


class Protocol(StrEnum):
    dtm = "dtm"
    tem = "tem"


def serve(
    protocol: Annotated[Protocol, typer.Option(
        help="dtm: Pyro5 STEM server (port 9091); tem: netstring JSON-RPC (port 9093).")],
    port: Annotated[int | None, typer.Option(
        help="TCP port (default 9091 dtm / 9093 tem; 0 = any free port).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Twin seed (specimen and noise).")] = 0,
    faults: Annotated[str, typer.Option(
        help="Fault spec, e.g. 'nan@3,stall@5:30,drop@8,slow:0.05'.")] = "",
    data: Annotated[str | None, typer.Option(
        help="dtm: NSID HDF5 file to register at start.")] = None,
    data_root: Annotated[str | None, typer.Option(
        help="dtm: the only folder register_data may read (default: the folder of --data, "
             "else the working folder).")] = None,
    tile: Annotated[list[str] | None, typer.Option(
        help="A real image (PNG/TIFF/NSID) as a specimen tile, in the specimen's last cells "
             "(repeatable).")] = None,
    max_data_bytes: Annotated[int, typer.Option(
        help="dtm: the largest file register_data opens.")] = MAX_DATA_BYTES,
    allow_control: Annotated[list[str] | None, typer.Option(
        "--allow-control", help="tem: a control clients may set, NAME or NAME=MIN:MAX "
                                "(repeatable; replaces the default: focus C10 and "
                                "stigmators; high tension and beam current are refused "
                                "unless named).")] = None,
    stage_limit: Annotated[float | None, typer.Option(
        help="tem: stage travel clients may ask for, +/- m (default: the twin's).")] = None,
    beam_current: Annotated[float | None, typer.Option(
        help="the beam current the twin's console holds at start (A).")] = None,
) -> None:
    """Serve a digital-twin microscope until interrupted (Ctrl-C)."""
    try:
        FaultSpec.parse(faults)
    except FaultSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--faults") from exc
    try:
        for path in [data, *(tile or [])]:
            if path:
                check_metadata_finishes(path)
        options = ServerOptions(allow_control, stage_limit, beam_current,
                                max_data_bytes=max_data_bytes)
        run_server(protocol.value, host, port, seed=seed, faults=faults, data=data,
                   announce=typer.echo, data_root=data_root, tiles=tile or (),
                   options=options)
    except (OSError, ValueError, RuntimeError) as exc:   # a bad file, a port in use
        raise fail(f"cannot serve the twin: {exc}") from exc
