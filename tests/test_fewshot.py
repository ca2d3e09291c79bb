"""Few-shot training (`train --profile fewshot`) and evaluation with classes the model does not
know (issue 23, items 1-3): small folders of 64 px images, the real stem, the real CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner
from workflows_synth import write_dataset

from agent.config import RunConfig
from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import DecisionRecord, HumanRecord
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter
from models.checkpoint import read_meta
from models.classifier import Classifier
from models.errors import StemMismatchError
from models.fewshot_head import SupportSet
from twins.classes import SEM_CLASSES
from twins.dataset import render_dataset
from twins.foreign_textures import render
from twins.microscope import TwinMicroscope
from workflows.cli.app import app
from workflows.session_assembly import run_session
from workflows.training.fewshot import MAX_SHOTS

pytestmark = pytest.mark.slow

runner = CliRunner()
# the support images are seen under quarter turns: orientation is no class of a micrograph, so
# "Vertical" (a turned "Horizontal") is left out
KINDS = ("Checker", "Dots", "Horizontal")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def fewshot(data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", str(data), "--out", str(out), "--profile", "fewshot",
                               *extra])


def write_foreign(root: Path, name: str, kind: str, n: int, size: int = 64) -> None:
    """`n` images of a texture family none of the workflow classes is (tests/foreign_textures)."""
    (root / name).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(render(kind, size, np.random.default_rng([7, i])), "L").save(
            root / name / f"{i}.png")


@pytest.fixture(scope="module")
def support(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("support"), per_class=3, size=64, seed=0,
                         classes=KINDS)


@pytest.fixture(scope="module")
def ckpt(support, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fewshot") / "model"
    result = fewshot(support, out)
    assert result.exit_code == 0, result.output
    return out


def test_fewshot_writes_a_calibrated_checkpoint_that_loads_and_classifies(ckpt, support):
    meta = read_meta(ckpt)
    assert meta["class_names"] == list(KINDS)
    assert meta["fusion_config"]["baseline"] == "fewshot" and meta["stem"]["sha256"]
    head = meta["head"]
    assert head["support"] == {c: 3 for c in KINDS} and head["not_calibrated"] == []
    assert head["calibration"]["folds"] == 3 and meta["conformal"]["qhat"] is not None
    assert meta["ood"]["method"] == "nearest_support"
    clf = Classifier.load(ckpt)
    frames = [np.asarray(Image.open(p).convert("L"), dtype=np.float32)
              for p in sorted((support / "Dots").glob("*.png"))]
    preds = clf.classify(frames)
    assert [p.label for p in preds] == ["Dots"] * 3
    assert all(p.extra["conformal"] == "LAC" for p in preds)
    assert all(p.ood["method"] == "nearest_support" for p in preds)
    assert clf.embed(frames).shape == (len(frames), 472)
    stored = SupportSet.load(ckpt)          # what a learning session can go on from
    assert stored.counts() == {c: 3 for c in KINDS}


def test_evaluate_scores_known_classes_and_flags_foreign_ones(ckpt, tmp_path):
    data = write_dataset(tmp_path / "data", per_class=4, size=64, seed=1, classes=KINDS)
    write_foreign(data, "Rings", "Rings", 4)
    result = runner.invoke(app, ["evaluate", str(ckpt), str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 12 and set(report["per_class"]) == set(KINDS)
    assert report["top1"] >= 0.75
    ood = report["ood"]
    assert ood["foreign_classes"] == ["Rings"] and ood["images"] == 4
    assert ood["method"] == "nearest_support" and ood["flagged"] == ood["per_class"]["Rings"]
    assert ood["flagged"] > ood["known_flagged"]


def test_evaluate_refuses_a_folder_without_any_known_class(ckpt, tmp_path):
    write_foreign(tmp_path, "Rings", "Rings", 2)
    result = runner.invoke(app, ["evaluate", str(ckpt), str(tmp_path), "--json"])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "none of its class folders" in result.output


def test_one_shot_says_what_could_not_be_calibrated(tmp_path):
    data = write_dataset(tmp_path / "one", per_class=1, size=64, classes=KINDS[:2])
    result = fewshot(data, tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "not calibrated: temperature" in result.output
    assert "not calibrated: OOD threshold" in result.output
    meta = read_meta(tmp_path / "m")
    assert meta["conformal"] is None and meta["temperature"] == 1.0
    assert len(meta["head"]["not_calibrated"]) == 4
    pred = Classifier.load(tmp_path / "m").classify([np.ones((64, 64))])[0]
    assert pred.extra["conformal"] == "uncalibrated" and pred.ood is not None


def test_descriptions_are_recorded_and_said_to_be_unused(support, tmp_path):
    texts = {c: f"{c.lower()} texture" for c in KINDS}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(texts))
    result = fewshot(support, tmp_path / "m", "--descriptions", str(path))
    assert result.exit_code == 0, result.output
    assert "descriptions: recorded in the checkpoint, not used" in result.output
    meta = read_meta(tmp_path / "m")
    assert meta["descriptions"] == [texts[c] for c in KINDS]
    assert meta["head"]["descriptions"].startswith("recorded")
    path.write_text(json.dumps({"Dots": "dots"}))
    result = fewshot(support, tmp_path / "n", "--descriptions", str(path))
    assert result.exit_code == 2 and "missing or empty" in result.output
    assert not (tmp_path / "n").exists()


def _error_line(result) -> str:
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_support_folders_fail_with_one_error_line_and_no_checkpoint(tmp_path):
    one = write_dataset(tmp_path / "one", per_class=2, size=32, classes=("A",))
    assert "at least two classes" in _error_line(fewshot(one, tmp_path / "m"))
    empty = write_dataset(tmp_path / "empty", per_class=2, size=32, classes=("A", "B"))
    (empty / "C").mkdir()
    assert "without images: ['C']" in _error_line(fewshot(empty, tmp_path / "m"))
    broken = write_dataset(tmp_path / "broken", per_class=2, size=32, classes=("A", "B"))
    (broken / "A" / "bad.png").write_bytes(b"not a png")
    assert "A/bad.png" in _error_line(fewshot(broken, tmp_path / "m"))
    many = write_dataset(tmp_path / "many", per_class=MAX_SHOTS + 1, size=16,
                         classes=("A", "B"), rgb_every=0)
    assert "--profile quick" in _error_line(fewshot(many, tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_a_head_learned_on_another_stem_is_refused_by_hash(ckpt, tmp_path):
    import shutil

    copy = tmp_path / "other_stem"
    shutil.copytree(ckpt, copy)
    meta = json.loads((copy / "config.json").read_text())
    meta["stem"]["sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(StemMismatchError, match="sha256 0000000000000000"):
        Classifier.load(copy)
    data = write_dataset(tmp_path / "data", per_class=1, size=64, classes=KINDS)
    assert "not the installed ones" in _error_line(
        runner.invoke(app, ["evaluate", str(copy), str(data), "--json"]))


def write_labelled_session(path: Path, per_class: int, classes: int) -> list[str]:
    """A session file of twin survey frames: `per_class` frames of each of the first `classes`
    classes met are labelled by a human (relabel/approve), the others not (confident, or a
    human skip); returns the human labels in order."""
    twin = TwinMicroscope(seed=0)
    twin.set_imaging(ImagingSettings(fov=20e-6, pixels=64, dwell=2e-6))
    provenance = {"session_id": str(uuid.uuid4()), "instrument": {"uri": "twin"},
                  "model": {"path": "m", "class_names": list(SEM_CLASSES)}, "run_config": {}}
    taught: list[str] = []
    with SessionWriter(path, provenance) as writer:
        for i, position in enumerate(twin.specimen.survey_centres(20e-6)[:40]):
            twin.move_stage(position)
            frame = twin.acquire()
            truth = frame.evaluation["label"]
            wanted = taught.count(truth) < per_class and (
                truth in taught or len(set(taught)) < classes)
            human = None
            if wanted:
                human = HumanRecord(decision="relabel" if i % 2 else "approve", label=truth)
                taught.append(truth)
            elif i % 3 == 0:
                human = HumanRecord(decision="skip")
            writer.write_frame(frame, DecisionRecord(
                frame_id=frame.frame_id, sequence=frame.sequence, label=truth,
                route="human" if human else "confident", human=human))
    twin.close()
    return taught


def test_the_human_labelled_frames_of_a_session_file_are_a_support_set(tmp_path):
    taught = write_labelled_session(tmp_path / "s.h5", per_class=2, classes=2)
    assert len(taught) == 4
    result = fewshot(tmp_path / "s.h5", tmp_path / "m")
    assert result.exit_code == 0, result.output
    head = read_meta(tmp_path / "m")["head"]
    assert head["support"] == {c: 2 for c in sorted(set(taught))}
    assert all(src.startswith("s.h5#") for src in head["sources"])
    one = write_labelled_session(tmp_path / "one.h5", per_class=3, classes=1)
    assert len(set(one)) == 1
    assert "at least two classes" in _error_line(fewshot(tmp_path / "one.h5", tmp_path / "n"))


def test_a_session_runs_on_a_fewshot_checkpoint(tmp_path):
    render_dataset(tmp_path / "twin", per_class=1, size=64, seed=0)
    assert fewshot(tmp_path / "twin", tmp_path / "m").exit_code == 0
    config = RunConfig(session_id=str(uuid.uuid4()), model=str(tmp_path / "m"),
                       out=str(tmp_path / "s.h5"), state_dir=str(tmp_path / "state"),
                       bank="none", frames=2, confidence=0.0, max_set_size=10,
                       imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6})
    final = run_session(config, Console(quiet=True), quiet=True)
    assert final["status"] == "completed"
    with SessionReader(config.out) as reader:
        summary, records = reader.summary(), reader.records()
    assert summary["frames"] == 2
    assert all(r.prediction.label in SEM_CLASSES for r in records)
    assert all(r.prediction.ood.method == "nearest_support" for r in records)
