"""The command line that runs one of our modules in a child Python, out of reach of the
working directory.

`python -m instruments.x` puts the working directory first on the child's `sys.path`, so a
folder there called `instruments/`, `models/` or `twins/` (a user's own) would be imported in
place of ours. `module_command` starts the child isolated (`-I`: no working directory, no
PYTHON* variables, no user site-packages) and puts the folder that holds this project's
packages first on its path by name, so it also works in a Python where micagent is not
installed (the bridges' own environments, such as `.venv-nion`).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]       # the folder holding instruments/, twins/, ...

# argv: -c ROOT MODULE ARGS...; runs MODULE as __main__ with argv [MODULE's file, ARGS...]
_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
         "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def module_command(module: str, *args: str, python: str | Path = sys.executable,
                   root: str | Path = ROOT) -> list[str]:
    """The argv that runs `python -m module args...` with `root` as the only source of the
    project's packages, whatever the working directory and environment hold."""
    return [str(python), "-I", "-c", _BOOT, str(root), module, *args]
