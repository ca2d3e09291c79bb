"""A working directory that would replace our packages in any child started with plain
`python -m`: it holds `agent/`, `instruments/`, `models/`, `twins/` and `workflows/` packages
whose import prints `shadowed: ...` and ends the process with exit code 3."""

from __future__ import annotations

from pathlib import Path

PACKAGES = ("agent", "instruments", "models", "twins", "workflows")
IMPOSTOR = ("import sys\n"
            "sys.stderr.write('shadowed: the {name}/ of the working directory was imported\\n')\n"
            "raise SystemExit(3)\n")


def shadowing_folder(folder: Path) -> Path:
    """Fill `folder` with the impostor packages; return it."""
    for name in PACKAGES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(IMPOSTOR.format(name=name))
    return folder
