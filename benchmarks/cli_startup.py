"""How long `micagent --help`, `micagent --version` and `micagent run --help` take, each in a
fresh Python (the command line imports a command's module only when it is used).

    python -m benchmarks.cli_startup [--repeat 5]

Prints, per command, the median and the slowest wall time in seconds, and the same for a bare
`python -c pass` (the interpreter's own start, for scale).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from instruments.utils.child_python import module_command

COMMANDS = {"python -c pass": [sys.executable, "-I", "-c", "pass"],
            "micagent --help": module_command("workflows", "--help"),
            "micagent --version": module_command("workflows", "--version"),
            "micagent run --help": module_command("workflows", "run", "--help")}


def timed(argv: list[str]) -> float:
    """Seconds one run of `argv` took (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<22} {'median s':>9} {'slowest s':>10}  ({args.repeat} runs each)")
    for name, argv in COMMANDS.items():
        timed(argv)                                       # warm the file cache
        times = [timed(argv) for _ in range(args.repeat)]
        print(f"{name:<22} {statistics.median(times):>9.3f} {max(times):>10.3f}")


if __name__ == "__main__":
    main()
