"""Row `adjudicator faults`: a session whose every frame goes to the VLM adjudicator, served by
a local OpenAI-compatible server (the real openai client talks to it) that answers each request
with a seeded fault — HTTP 500, a hang past the timeout, malformed JSON, a label outside the
classes, or an answer echoing the request headers (the API key) — or a good answer. Every
fault must appear in the frame's record with its kind, and the key nowhere on disk."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.fault_campaign.common import (
    PASSWORD,
    SECRET,
    Clock,
    Row,
    encoded_forms,
    secret_hits,
    small_classifier,
)
from twins.vlm_server import ChatHandler, serving, url  # the tests' local VLM server

FAULTS = ("500", "hang", "malformed", "unknown", "echo")
TIMEOUT_S = 0.5
SIGNS = {"500": "http 500", "hang": "timeout", "malformed": "malformed json",
         "unknown": "not one of the allowed labels"}


class FaultyVlm(ChatHandler):
    def do_POST(self):  # noqa: N802
        self.read_json()
        with self.server.lock:
            mode = self.server.modes.pop(0) if self.server.modes else "good"
            self.server.served[mode] = self.server.served.get(mode, 0) + 1
        echo = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        echo += "; encoded: " + " ".join(encoded_forms(key))
        if mode == "500":
            return self.send_json(500, {"error": {"message": f"internal error ({echo})"}})
        if mode == "hang":
            time.sleep(TIMEOUT_S * 3)
        content = {"good": json.dumps({"label": "Particles", "confidence": 0.8,
                                       "rationale": "round grains"}),
                   "hang": json.dumps({"label": "Particles", "confidence": 0.8}),
                   "malformed": '{"label": "Particles", "confidence": ',
                   "unknown": json.dumps({"label": "Dragons", "confidence": 0.9,
                                          "rationale": "scales"}),
                   "echo": json.dumps({"label": "Powder", "confidence": 0.7,
                                       "rationale": f"you sent {echo}"})}[mode]
        self.send_chat(content, model="m")


def plan(n_faults: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """Modes in request order (two attempts per frame at most) and the frames they need."""
    modes, frames, placed = [], 0, 0
    while placed < n_faults:
        frames += 1
        first = str(rng.choice(FAULTS))
        modes.append(first)
        placed += 1
        if first == "echo":                       # a usable answer: no second attempt
            continue
        if placed < n_faults and rng.random() < 0.5:
            modes.append(str(rng.choice([f for f in FAULTS if f != "echo"])))
            placed += 1
        else:
            modes.append("good")
    return modes, frames


def run(work: Path, n_faults: int, seed: int) -> Row:
    from agent.adjudication.demonstrations import DemonstrationBank
    from agent.config import RunConfig, checkpoint_path
    from agent.session import Session, SessionParts
    from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
    from instruments.session_file.reader import SessionReader
    from twins.microscope import TwinMicroscope

    clock, row = Clock(), Row("adjudicator faults (VLM)")
    modes, frames = plan(n_faults, np.random.default_rng(seed))
    with serving(FaultyVlm, modes=list(modes), served={}, lock=threading.Lock()) as server:
        saved = {k: os.environ.get(k) for k in ("MICAGENT_VLM_BASE_URL", "MICAGENT_VLM_MODEL",
                                                 "OPENAI_API_KEY")}
        os.environ.update(MICAGENT_VLM_BASE_URL=url(server).replace(
                              "://", f"://campaign:{PASSWORD}@"),
                          MICAGENT_VLM_MODEL="faulty-vlm", OPENAI_API_KEY=SECRET)
        try:
            classifier = small_classifier()
            twin = TwinMicroscope(seed=seed)
            centres = twin.specimen.survey_centres(2e-6)
            demo = []
            for c in centres[:4]:
                twin.move_stage(c)
                demo.append(twin.acquire().image)
            bank = DemonstrationBank(np.stack(demo), ["Particles", "Powder", "Tips", "Fibres"],
                                     classifier.embed(demo))
            config = RunConfig(session_id=str(uuid.uuid4()), out=str(work / "vlm.h5"),
                               frames=frames, state_dir=str(work / "state"), adjudicator="openai",
                               confidence=1.01, max_rescans=0, demo_k=2, vlm_timeout_s=TIMEOUT_S,
                               imaging={"fov": 2e-6, "pixels": 32, "dwell": 1e-7})
            config.budgets = {**config.budgets, "adjudications": frames, "wall_s": 1e9}
            positions = [{"x": c.x, "y": c.y, "row": 0, "col": i}
                         for i, c in enumerate(centres[:frames])]
            parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier, bank,
                                 survey_positions=positions)
            session = Session(config, parts)
            try:
                session.run()
            except Exception as exc:  # noqa: BLE001
                row.crashes += 1
                row.note(f"session raised {type(exc).__name__}: {str(exc)[:100]}")
            finally:
                session.close()
            with SessionReader(config.out) as reader:
                records = reader.records()
            attempts = [a.lower() for r in records if r.adjudication
                        for a in (r.adjudication.attempts or [])]
            rationales = [r.adjudication.answer.rationale for r in records
                          if r.adjudication and r.adjudication.answer]
            for kind in FAULTS:
                served = server.served.get(kind, 0)
                row.cases += served
                found = (sum("[redacted]" in (t or "") for t in rationales) if kind == "echo"
                         else sum(SIGNS[kind] in a for a in attempts))
                if found < served:
                    row.unrecorded += served - found
                    row.note(f"{kind}: {served} served, {found} in the records")
            if len(records) != len(positions):
                row.lost += len(positions) - len(records)
            row.secrets = len(secret_hits(work))
            kib = checkpoint_path(config.out).stat().st_size // 1024
            row.note(f"{frames} frames, {len(records)} recorded; checkpoint {kib} KiB scanned "
                     "for the key")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    row.seconds = clock()
    return row
