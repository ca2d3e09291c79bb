"""Small session files for replay tests and benchmarks, written without running the agent: twin
frames at survey positions, each with the decision record an earlier model would have stored
(its label and route drawn from the frame's ground truth, a few of them wrong or escalated)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.writer import SessionWriter
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope


def _record(frame, label: str, route: str, rng: np.random.Generator) -> DecisionRecord:
    runner_up = str(rng.choice([c for c in SEM_CLASSES if c != label]))
    confidence = float(rng.uniform(0.5, 0.99))
    return DecisionRecord.model_validate({
        "frame_id": frame.frame_id, "sequence": frame.sequence,
        "position": {"x": frame.stage.x, "y": frame.stage.y}, "settings": frame.settings,
        "prediction": {"label": label, "confidence": confidence,
                       "top_k": [[label, confidence], [runner_up, 1.0 - confidence]],
                       "conformal_set": [label]},
        "label": label, "route": route, "quality": {"ok": True}})


def write_twin_session(path: str | Path, frames: int, seed: int = 0, pixels: int = 64,
                       session_id: str | None = None, run_config: dict | None = None,
                       nan_frames: tuple[int, ...] = ()) -> Path:
    """A closed session file of `frames` twin frames (seeded; those of `nan_frames` with a NaN
    pixel); returns its path."""
    path = Path(path)
    twin = TwinMicroscope(seed=seed)
    fov = 20e-6
    twin.set_imaging(ImagingSettings(fov=fov, pixels=pixels, dwell=2e-6))
    rng = np.random.default_rng(seed)
    provenance = {"session_id": session_id or str(uuid.uuid4()),
                  "instrument": {"uri": "twin", "id": twin.instrument_id},
                  "model": {"path": "earlier-model", "class_names": list(SEM_CLASSES)},
                  "run_config": dict(run_config or {})}
    positions = twin.specimen.survey_centres(fov)
    with SessionWriter(path, provenance) as writer:
        for i in range(frames):
            twin.move_stage(positions[(seed * 7 + i) % len(positions)])
            frame = twin.acquire()
            if i in nan_frames:
                frame.image[0, 0] = np.nan
            truth = frame.evaluation["label"]
            wrong = rng.random() < 0.25
            label = str(rng.choice(SEM_CLASSES)) if wrong else truth
            route = "adjudicated" if wrong and rng.random() < 0.5 else "confident"
            writer.write_frame(frame, _record(frame, label, route, rng))
    twin.close()
    return path
