"""Shared pieces of the fault campaign: a result row and the table, servers in their own
processes on loopback, a small classifier, and a scan of files for a secret."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

from instruments.utils.child_python import module_command

REPO = Path(__file__).resolve().parents[2]
# the key every row tries to leak ('/' and '+' make its JSON-escaped and URL-encoded forms
# differ from it), and the password of the VLM server's URL
SECRET = f"sk-campaign/{uuid.uuid4().hex}+{uuid.uuid4().hex}"
PASSWORD = "pw-" + uuid.uuid4().hex


@dataclass
class Row:
    """One line of the table: how many cases ran and what went wrong."""

    name: str
    cases: int = 0
    crashes: int = 0
    lost: int = 0
    doubled: int = 0
    secrets: int = 0
    unrecorded: int = 0
    breaches: int = 0              # envelope: a forbidden change or dose reached the instrument
    good_after: str = "-"          # servers: good requests answered after each flood
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes and len(self.notes) < 6:
            self.notes.append(text)


COLUMNS = ("row", "cases", "crashes", "lost", "doubled", "secrets", "unrecorded",
           "breaches", "good after", "s")


def table(rows: list[Row]) -> str:
    """The campaign's table as aligned text, notes below."""
    cells = [COLUMNS] + [(r.name, str(r.cases), str(r.crashes), str(r.lost), str(r.doubled),
                          str(r.secrets), str(r.unrecorded), str(r.breaches), r.good_after,
                          f"{r.seconds:.0f}")
                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i])
                       for i in range(len(COLUMNS))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        lines.extend(f"  {r.name}: {n}" for n in r.notes)
    return "\n".join(lines)


def encoded_forms(secret: str) -> list[str]:
    """What an endpoint may echo back: JSON-escaped (with `\\/`), URL-encoded, base64 (alone
    and inside a longer base64 text)."""
    return [json.dumps(secret).replace("/", "\\/"), quote(secret, safe=""),
            quote_plus(secret), base64.b64encode(secret.encode()).decode(),
            base64.b64encode(b"k=" + secret.encode()).decode()]


def secret_hits(folder: Path, secret: str = SECRET) -> list[Path]:
    """Files under `folder` holding `secret` (its first 20 characters, or any encoded form of
    it: the middle of each base64 form) or the URL password."""
    forms = [secret, secret[:20], PASSWORD, *encoded_forms(secret)[:3],
             *(f[4:-4] for f in encoded_forms(secret)[3:])]
    needles = [f.encode() for f in forms]
    return [p for p in folder.rglob("*") if p.is_file()
            and any(n in p.read_bytes() for n in needles)]


@dataclass
class Served:
    process: subprocess.Popen
    host: str
    port: int
    output: list[str]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@contextmanager
def twin_server(protocol: str, work: Path, faults: str = "", seed: int = 0,
                data_root: Path | None = None) -> Iterator[Served]:
    """`twins.serve` (out of the working directory's reach) on a free loopback port, killed at
    the end of the block."""
    cmd = module_command("twins.serve", "--protocol", protocol, "--host", "127.0.0.1",
                         "--port", "0", "--seed", str(seed))
    if faults:
        cmd += ["--faults", faults]
    if protocol == "dtm":
        cmd += ["--data-root", str(data_root or work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("READY "):
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(60) or not any(x.startswith("READY ") for x in lines):
            raise RuntimeError(f"server did not start: {cmd}\n" + "\n".join(lines[-20:]))
        address = next(x for x in lines if x.startswith("READY ")).split()[-1]
        host, port = address.rsplit("@", 1)[-1].rsplit(":", 1)
        yield Served(process, host, int(port), lines)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def small_classifier():
    """The papers' ViT-only ablation, untrained (seed 0): fast, and the faults are the point."""
    import torch

    from models.classifier import Classifier
    from models.config import FusionConfig
    from twins.classes import SEM_CLASSES

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Classifier.create(FusionConfig.ablation("vit_only"), SEM_CLASSES)


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start
