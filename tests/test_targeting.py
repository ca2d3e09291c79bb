"""Where to look next (agent/targeting.py, agent/search_plan.py): the search strategies on the
twin, their safety limits, exact resume after SIGKILL, the stored overview, and the command
line's refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from plumbing_model import untrained

from agent.config import RunConfig
from agent.session import Session, SessionParts
from agent.targeting import (
    ACTIVE_INPUTS,
    FEATURE_COMPONENTS,
    MAX_OBSERVATIONS,
    Overview,
    choose_next,
    crop_features,
    overview_plan,
    search_area,
    training_set,
)
from instruments.devices.frame import StagePosition
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope
from workflows.report.hunt_cost import hunt_rows
from workflows.report.session_report import build_report

pytestmark = pytest.mark.slow

torch.set_num_threads(1)
FOV = 20e-6
BOUNDS = ((-1e-3, 1e-3), (-1e-3, 1e-3))


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


@pytest.fixture(scope="module")
def twin():
    return TwinMicroscope(seed=0)


def _richest_class(twin, candidates):
    labels = Counter(twin.specimen.label_at(p["x"], p["y"]) for p in candidates)
    return labels.most_common(1)[0]


def test_active_search_with_known_outcomes_finds_the_targets_the_area_holds(twin):
    """Outcomes from the twin's ground truth (a perfect classifier): the surrogate's
    choices find N targets of the area's commonest class, each tile at most once."""
    candidates = search_area((0.0, 0.0), FOV, 49, BOUNDS)
    target, present = _richest_class(twin, candidates)
    n = min(5, present)
    chosen, outcomes, here = [], [], (0.0, 0.0)
    while sum(outcomes) < n:
        index = choose_next(candidates, chosen, outcomes, here, FOV)
        assert index is not None, "the area ran out before the targets were found"
        chosen.append(index)
        p = candidates[index]
        outcomes.append(float(twin.specimen.label_at(p["x"], p["y"]) == target))
        here = (p["x"], p["y"])
    assert len(set(chosen)) == len(chosen) and sum(outcomes) == n


def test_surrogate_choices_stay_inside_the_stage_range_and_envelope():
    """Near the stage's corner the search area is cut to the allowed range, and every choice
    the surrogate makes lies wholly inside it."""
    bounds = ((-1e-3, -0.95e-3), (-1e-3, -0.96e-3))      # envelope tighter than the stage
    candidates = search_area((-1e-3, -1e-3), FOV, 36, bounds)
    assert candidates
    chosen, outcomes = [], []
    rng = np.random.default_rng(0)
    while (index := choose_next(candidates, chosen, outcomes, (-1e-3, -1e-3), FOV)) is not None:
        chosen.append(index)
        outcomes.append(float(rng.random() < 0.3))
    assert sorted(chosen) == list(range(len(candidates)))
    for p in candidates:
        assert bounds[0][0] <= p["x"] - FOV / 2 and p["x"] + FOV / 2 <= bounds[0][1]
        assert bounds[1][0] <= p["y"] - FOV / 2 and p["y"] + FOV / 2 <= bounds[1][1]


def test_the_prior_leads_the_first_choice_and_embedding_features_carry_a_hit_over():
    """With the overview's score as prior mean the surrogate starts at the best-scored tile,
    not the nearest; after a hit there, a far tile whose crop looks like the hit's (close in
    the embedding features) comes before near tiles that look unlike it."""
    candidates = search_area((0.0, 0.0), FOV, 49, BOUNDS)
    far = max(range(len(candidates)), key=lambda i: abs(candidates[i]["x"])
              + abs(candidates[i]["y"]))
    best = 24 if far != 24 else 0
    for i, p in enumerate(candidates):
        p["prior"] = 0.3 if i == best else 0.1
        p["features"] = [0.0, 0.0] if i in (best, far) else [20.0, 20.0]
    first = choose_next(candidates, [], [], (0.0, 0.0), FOV)
    assert first == best
    assert choose_next(candidates, [first], [1.0], (candidates[best]["x"],
                                                   candidates[best]["y"]), FOV) == far


def test_a_long_search_fits_the_gp_to_every_hit_and_the_latest_misses():
    """Past MAX_OBSERVATIONS outcomes the GP keeps each hit and forgets the oldest misses,
    so a choice's cost stops growing with the search."""
    n = MAX_OBSERVATIONS + 40
    outcomes = np.zeros(n)
    outcomes[[3, 50, n - 1]] = 1.0
    kept = training_set(list(range(n)), outcomes)
    assert len(kept) == MAX_OBSERVATIONS and set(kept) >= {3, 50, n - 1}
    assert set(kept) - {3, 50} == set(range(n - MAX_OBSERVATIONS + 1, n)) - {50}
    assert list(training_set(list(range(10)), np.zeros(10))) == list(range(10))


def test_crop_features_are_whitened_components_of_the_embeddings():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 256)).astype(np.float32)
    features = crop_features(embeddings)
    assert features.shape == (40, FEATURE_COMPONENTS)
    assert np.allclose(features.std(axis=0, ddof=1), 1.0, atol=1e-3)
    assert crop_features(embeddings[:1]).shape == (1, 0)


def test_overview_crops_land_on_the_tiles_they_score(twin):
    """The overview's geometry: a candidate's crop of the mosaic shows the specimen at that
    candidate (the twin's label map stands in for the image)."""
    candidates = search_area((0.0, 0.0), FOV, 36, BOUNDS)
    origin, ofov, centres = overview_plan(candidates, FOV, 100e-6)
    count = int(round(len(centres) ** 0.5))
    px = 128
    mosaic = np.zeros((count * px, count * px), np.int16)
    for i, (x, y) in enumerate(centres):
        r, c = divmod(i, count)
        mosaic[r * px:(r + 1) * px, c * px:(c + 1) * px] = twin.specimen.label_map(
            StagePosition(x, y), ofov, px)
    overview = Overview(mosaic, origin, ofov / px, [])
    agree = 0
    for p in candidates:
        codes = Counter(overview.crop(p["x"], p["y"], FOV).ravel().tolist())
        truth = twin.specimen.label_at(p["x"], p["y"])
        agree += twin.specimen.label_names[codes.most_common(1)[0][0]] == truth
    assert agree >= 0.8 * len(candidates)       # tiles straddling a region edge may differ


def make_session(tmp_path: Path, classifier, session_id: str, strategy: str,
                 frames: int = 9, objective: str = "hunt:Tips:3") -> Session:
    twin = TwinMicroscope(seed=0)
    config = RunConfig(session_id=session_id, out=str(tmp_path / "s.h5"), frames=frames,
                       objective=objective, strategy=strategy, confidence=0.0,
                       state_dir=str(tmp_path / "state"), pipeline=False,
                       imaging={"fov": FOV, "pixels": 64, "dwell": 2e-6},
                       thresholds={"min_sharpness": 0.0, "min_snr": 0.0, "max_drift_px": 1e9})
    return Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier))


def positions(path: Path) -> list[tuple[float, float]]:
    with SessionReader(path) as reader:
        return [(r.position.x, r.position.y) for r in reader.records()]


def test_overview_hunt_stores_its_map_and_sciFiReaders_reads_it(tmp_path, classifier,
                                                                scifi_read):
    session = make_session(tmp_path, classifier, str(uuid.uuid4()), "overview")
    session.run()
    with SessionReader(tmp_path / "s.h5") as reader:
        stored = reader.overview()
        visited = [(r.tile.row, r.tile.col) for r in reader.records()]
    assert stored is not None and stored.scores.shape == (3, 3)
    ranked = [tuple(rc) for rc in stored.metadata["ranked"]]
    assert visited == ranked[:len(visited)]       # best score first
    assert stored.tile == pytest.approx(FOV) and stored.pixel > 0
    datasets = scifi_read(tmp_path / "s.h5")
    by_title = {str(d.title).rsplit("/", 1)[-1]: d for d in (
        datasets.values() if isinstance(datasets, dict) else datasets)}
    scores = by_title["Score_map"]
    assert np.allclose(np.asarray(scores), stored.scores, equal_nan=True)
    x_axis = scores.x.values
    assert scores.x.units == "m"
    assert np.diff(np.asarray(x_axis)) == pytest.approx([FOV] * 2)
    assert by_title["Overview"].shape == stored.image.shape


def test_the_report_draws_the_overview_under_the_mosaic_and_the_search_map(tmp_path,
                                                                          classifier):
    make_session(tmp_path, classifier, str(uuid.uuid4()), "overview").run()
    page = build_report(tmp_path / "s.h5", tmp_path / "report").read_text("utf-8")
    assert 'class="underlay" src="overview.png"' in page
    assert "Where the search looked" in page and "search_map.png" in page
    assert (tmp_path / "report" / "search_map.png").stat().st_size > 0


def test_the_summary_gives_frames_travel_and_dose_per_target_found(tmp_path, classifier):
    session = make_session(tmp_path, classifier, str(uuid.uuid4()), "grid")
    session.config.confidence = 0.0
    final = session.run()
    with SessionReader(tmp_path / "s.h5") as reader:
        records = reader.records()
    lines = dict(hunt_rows("hunt:Tips:3", records))
    hits = final["counts"]["hits"]
    if hits:
        assert lines["targets found"] == f"{hits} of 3"
        assert lines["per target found"].startswith(f"{len(records) / hits:.1f} frames, ")
    else:
        assert lines["targets found"].startswith(f"none in {len(records)} frames")
    assert hunt_rows("survey", records) == []


def _run_killed(tmp_path: Path, classifier, session_id: str, after_plans: int,
                objective: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            seen = {"n": 0}

            def on_step(name: str, _update: dict) -> None:
                seen["n"] += name == "plan"
                if seen["n"] == after_plans:
                    os.kill(os.getpid(), signal.SIGKILL)
            make_session(tmp_path, classifier, session_id, "active",
                         objective=objective).run(on_step=on_step)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


@pytest.mark.parametrize("objective", ["hunt:Tips:3", "explore"])
def test_active_search_resumed_after_sigkill_chooses_the_same_positions(tmp_path, classifier,
                                                                       objective):
    """A hunt's surrogate reads stage coordinates; explore's also the overview crops'
    embedding features, fixed in the plan file at the start: both resume exactly."""
    whole = tmp_path / "whole"
    make_session(whole, classifier, str(uuid.uuid4()), "active", objective=objective).run()
    killed, session_id = tmp_path / "killed", str(uuid.uuid4())
    assert _run_killed(killed, classifier, session_id, 4, objective) == signal.SIGKILL
    make_session(killed, classifier, session_id, "active", objective=objective).run()
    assert positions(killed / "s.h5") == positions(whole / "s.h5")
    assert len(positions(whole / "s.h5")) >= 4
    plan = json.loads((killed / "s.h5.work" / "plan.json").read_text("utf-8"))
    reads_features = ACTIVE_INPUTS[objective.partition(":")[0]][1]
    assert all(len(p.get("features", [])) == (FEATURE_COMPONENTS if reads_features else 0)
               for p in plan)


@pytest.mark.parametrize("args, says", [
    (["--objective", "hunt:Tips", "--strategy", "zigzag"], "--strategy must be one of"),
    (["--objective", "hunt:Unicorns:2", "--strategy", "active"], "unknown class Unicorns"),
    (["--objective", "survey", "--strategy", "overview"], "a survey images its whole plan"),
])
def test_a_bad_strategy_or_objective_is_one_error_line_before_anything_loads(
        tmp_path, args, says):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "workflows", "run", *args, "--out",
                           str(tmp_path / "s.h5"), "--state-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error:") and says in lines[0]
    assert not (tmp_path / "s.h5").exists()
