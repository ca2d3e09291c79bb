"""Train / evaluate end to end on a tiny generated 4-class set (small model, 1-2 epochs),
the evaluate --json schema, resume after an interruption, and bad input."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from workflows_synth import CLASSES, write_dataset

from models.checkpoint import checkpoint_sha256, read_meta
from models.classifier import Classifier
from models.config import FusionConfig
from models.errors import CheckpointError
from models.fusion import FusionClassifier
from workflows.cli.app import app
from workflows.session_assembly import BUNDLED_MODEL
from workflows.terminal import json_text
from workflows.training.train import (
    TrainError,
    TrainOptions,
    eta_text,
    init_from_checkpoint,
    train,
)

pytestmark = pytest.mark.slow

SMALL = {"img_size": 64, "vit_depth": 1, "hnf_patch_sizes": [16, 32], "hnf_knn": [4, 2],
         "gnn_patch": 16}
SMALL_JSON = json.dumps(SMALL)
runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), per_class=12, size=48)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[Path, str]:
    """A checkpoint trained by the CLI, and what the command printed."""
    out = tmp_path_factory.mktemp("ckpt") / "model"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--epochs", "2",
                                 "--batch-size", "16", "--config", SMALL_JSON])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def ckpt(trained) -> Path:
    return trained[0]


def test_training_says_the_time_left_and_ends_with_the_held_out_score(trained):
    ckpt, output = trained
    first, last = output.split("fold 1 epoch 2")
    assert "ETA ≤" in first.split("fold 1 epoch 1")[1] and "ETA" not in last  # none at the end
    fold = json.loads((ckpt / "training_fold.json").read_text())
    test = json.loads((ckpt / "training.json").read_text())["splits"][0]["test"]
    assert fold["held_out"]["images"] == len(test) and 0 <= fold["held_out"]["top1"] <= 1
    assert (f"held-out test split: top-1 {fold['held_out']['top1']:.3f} on {len(test)} images"
            in output)
    assert eta_text([{"seconds": 30.0}], 5, None) == "  ETA ≤ 2 min 30 s"
    assert eta_text([{"seconds": 30.0}], 5, 20.0) == "  ETA ≤ 50 s"      # budget, one epoch


def test_train_writes_a_calibrated_checkpoint_with_its_training_record(ckpt):
    meta = read_meta(ckpt)
    assert meta["class_names"] == sorted(CLASSES)
    assert meta["conformal"]["qhat"] is not None and meta["temperature"] > 0
    record = json.loads((ckpt / "training.json").read_text())
    assert record["options"]["profile"] == "quick" and record["options"]["epochs"] == 2
    split = record["splits"][0]
    assert not set(split["train"]) & set(split["test"])
    assert len(record["confounding"]["selected"]) == round(0.1 * 48)
    assert not ckpt.with_name(ckpt.name + ".partial").exists()
    preds = Classifier.load(ckpt).classify(torch.rand(3, 50, 50).numpy())
    assert len(preds) == 3 and preds[0].label in CLASSES


def test_evaluate_json_has_the_agreed_keys_and_scores_the_held_out_split(ckpt, data):
    result = runner.invoke(app, ["evaluate", str(ckpt), str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("top1", "top2", "top3", "top5", "macro_precision", "macro_recall",
                "macro_f1", "ece", "per_class", "ece_before_temperature",
                "conformal_coverage", "conformal_mean_set_size", "confusion_matrix"):
        assert key in report
    assert 0 <= report["top1"] <= report["top2"] <= report["top3"] <= report["top5"] == 1.0
    assert set(report["per_class"]) == set(CLASSES)
    assert set(report["per_class"]["Dots"]) >= {"precision", "recall", "f1", "support"}
    test_size = len(json.loads((ckpt / "training.json").read_text())["splits"][0]["test"])
    assert report["n_images"] == test_size and report["subset"].startswith("held-out")


def test_evaluate_writes_only_into_out(ckpt, data, tmp_path, monkeypatch):
    def everything() -> list[str]:
        return sorted(str(p) for folder in (ckpt, data, tmp_path) for p in folder.rglob("*"))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in ckpt.iterdir())
    untouched = everything()
    result = runner.invoke(app, ["evaluate", str(ckpt), str(data)])
    assert result.exit_code == 0, result.output
    assert "macro_f1" in result.stdout
    assert everything() == untouched       # nothing written: checkpoint, data, working folder
    result = runner.invoke(app, ["evaluate", str(ckpt), str(data), "--out",
                                 str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["top1"] >= 0
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_json_is_indented_on_a_terminal_and_one_line_in_a_pipe(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert json_text({"top1": 0.5}) == '{\n  "top1": 0.5\n}'
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert json_text({"top1": 0.5}) == '{"top1": 0.5}'


def test_evaluate_scores_a_class_the_model_does_not_know_as_foreign(ckpt, tmp_path):
    other = write_dataset(tmp_path, per_class=3, size=48, classes=("Dots", "Spirals"))
    result = runner.invoke(app, ["evaluate", str(ckpt), str(other), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 3 and report["per_class"]["Dots"]["support"] == 3
    assert report["ood"]["foreign_classes"] == ["Spirals"] and report["ood"]["images"] == 3
    assert 0.0 <= report["ood"]["flagged"] <= 1.0 and report["ood"]["method"] == "mahalanobis"


def test_interrupted_training_leaves_no_checkpoint_and_resumes_after_its_last_epoch(data,
                                                                                     tmp_path):
    out = tmp_path / "model"
    opts = TrainOptions(epochs=2, batch_size=16, config_overrides=SMALL)
    first: list[dict] = []

    def interrupt(fold: int, row: dict) -> None:
        first.append(row)
        raise KeyboardInterrupt  # as if the process were killed after epoch 1

    with pytest.raises(KeyboardInterrupt):
        train(data, out, opts, on_epoch_end=interrupt)
    assert not out.exists()
    with pytest.raises(CheckpointError):
        read_meta(out)
    assert (tmp_path / "model.partial" / "fold_0.pt").exists()
    second: list[dict] = []
    train(data, out, opts, on_epoch_end=lambda fold, row: second.append(row))
    assert [r["epoch"] for r in first] == [1] and [r["epoch"] for r in second] == [2]
    history = json.loads((out / "training_fold.json").read_text())["history"]
    assert history[0] == first[0] and len(history) == 2
    read_meta(out)


def test_a_resumed_run_with_other_options_is_refused(data, tmp_path):
    out = tmp_path / "model"

    def interrupt(fold: int, row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, out, TrainOptions(epochs=2, batch_size=16, config_overrides=SMALL),
              on_epoch_end=interrupt)
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--epochs", "2",
                                 "--seed", "7", "--batch-size", "16", "--config", SMALL_JSON])
    assert result.exit_code == 2 and "--restart" in result.output
    assert not out.exists()


def test_one_class_and_empty_folders_fail_clearly(tmp_path):
    one = write_dataset(tmp_path / "one", per_class=4, size=32, classes=("A",))
    result = runner.invoke(app, ["train", str(one), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "at least two class folders" in result.output
    two = write_dataset(tmp_path / "two", per_class=4, size=32, classes=("A", "B"))
    (two / "C").mkdir()
    result = runner.invoke(app, ["train", str(two), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "'C'" in result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_k_fold_training_reports_mean_and_std_across_folds(data, tmp_path):
    out = tmp_path / "cv"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--profile", "paper",
                                 "--folds", "2", "--epochs", "1", "--batch-size", "24",
                                 "--config", SMALL_JSON])
    assert result.exit_code == 0, result.output
    assert (out / "folds" / "fold_0" / "config.json").exists()
    assert (out / "folds" / "fold_1" / "config.json").exists()
    report = json.loads(runner.invoke(app, ["evaluate", str(out), str(data), "--json"]).stdout)
    assert report["n_folds"] == 2 and report["n_images"] == 48  # every image tested once
    assert {"top1", "macro_f1", "ece"} <= set(report["std"])
    assert "f1_std" in report["per_class"]["Dots"]


def test_ablate_writes_the_comparison_table(data, tmp_path):
    result = runner.invoke(app, ["ablate", str(data), "--out", str(tmp_path), "--epochs", "1",
                                 "--batch-size", "24", "--variants", "vit_only,gnn_only",
                                 "--config", SMALL_JSON])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["vit_only", "gnn_only"]
    assert all(0 <= r["top1"] <= 1 for r in table["rows"])
    markdown = (tmp_path / "ablation.md").read_text()
    assert "| ViT baseline |" in markdown and "Avg-F1" in markdown
    # a variant trained before an option existed (its record lacks the key) is not retrained
    record_path = tmp_path / "vit_only" / "training.json"
    record = json.loads(record_path.read_text())
    del record["options"]["init"]
    record_path.write_text(json.dumps(record))
    result = runner.invoke(app, ["ablate", str(data), "--out", str(tmp_path), "--epochs", "1",
                                 "--batch-size", "24", "--variants", "vit_only",
                                 "--config", SMALL_JSON])
    assert result.exit_code == 0 and "vit_only: already trained" in result.output


def test_a_time_budget_ends_training_after_the_epoch_that_crosses_it(data, tmp_path):
    out = tmp_path / "model"
    train(data, out, TrainOptions(epochs=5, batch_size=16, config_overrides=SMALL,
                                  time_budget_min=0.0))
    record = json.loads((out / "training_fold.json").read_text())
    assert len(record["history"]) == 1 and record["stopped_by"] == "time budget"


def _knowledge_file(path: Path, classes: tuple[str, ...]) -> Path:
    import hashlib

    entries = {}
    for c in classes:
        text = f"{c}: a texture of {c.lower()} stripes or dots."
        entries[c] = {"description": text, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    path.write_text(json.dumps({"format": "micagent-knowledge/1", "provenance": {"how": "test"},
                                "classes": entries}))
    return path


def test_train_uses_the_given_knowledge_file_and_refuses_one_missing_a_class(data, tmp_path):
    know = _knowledge_file(tmp_path / "k.json", CLASSES)
    out = tmp_path / "model"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--epochs", "1",
                                 "--batch-size", "24", "--config", SMALL_JSON,
                                 "--knowledge", str(know)])
    assert result.exit_code == 0, result.output
    descriptions = read_meta(out)["descriptions"]
    assert descriptions[read_meta(out)["class_names"].index("Dots")].startswith("Dots: a texture")
    partial = _knowledge_file(tmp_path / "k2.json", CLASSES[:3])
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m2"),
                                 "--knowledge", str(partial), "--config", SMALL_JSON])
    assert result.exit_code == 2 and "no description for classes ['Checker']" in result.output


def _fresh_model(ckpt: Path) -> torch.nn.Module:
    meta = read_meta(ckpt)
    torch.manual_seed(123)
    config = FusionConfig.from_dict(meta["fusion_config"])
    return Classifier.create(config, meta["class_names"], meta["descriptions"]).model


def test_init_copies_every_weight_of_a_checkpoint_of_the_same_class_set(ckpt):
    model = _fresh_model(ckpt)
    summary = init_from_checkpoint(model, str(ckpt), read_meta(ckpt)["class_names"])
    source = Classifier.load(ckpt).model.trainable_state_dict()
    ours = model.trainable_state_dict()
    assert summary.startswith(f"initialised {len(source)} of {len(ours)}")
    assert all(torch.equal(ours[k], v) for k, v in source.items())


def test_init_for_another_class_set_leaves_the_per_class_weights_new(ckpt):
    model = _fresh_model(ckpt)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    summary = init_from_checkpoint(model, str(ckpt), ["w", "x", "y", "z"])
    source = Classifier.load(ckpt).model.trainable_state_dict()
    ours = model.trainable_state_dict()
    per_class = [k for k in ours if k.startswith(FusionClassifier.class_prefixes())]
    assert "head.weight" in per_class and "new: " in summary
    assert all(torch.equal(ours[k], before[k]) for k in per_class)
    assert all(torch.equal(ours[k], source[k]) for k in ours if k not in per_class)


def test_init_across_a_stem_change_copies_what_fits_and_names_the_rest(ckpt):
    meta = read_meta(ckpt)
    config = FusionConfig.from_dict({**meta["fusion_config"], "stem": "none"})
    raw = Classifier.create(config, meta["class_names"], meta["descriptions"]).model
    summary = init_from_checkpoint(raw, str(ckpt), meta["class_names"])
    assert summary.startswith("initialised ") and "vit.vit.patch_embed.proj.weight" in summary
    source = Classifier.load(ckpt).model.trainable_state_dict()
    ours = raw.trainable_state_dict()
    assert torch.equal(ours["vit.vit.blocks.0.attn.qkv.weight"],
                       source["vit.vit.blocks.0.attn.qkv.weight"])


def test_a_run_started_from_a_checkpoint_records_it_and_bad_init_paths_fail(ckpt, data,
                                                                           tmp_path):
    out = tmp_path / "tuned"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--epochs", "1",
                                 "--batch-size", "16", "--config", SMALL_JSON,
                                 "--init", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert "initialised" in result.output
    init = json.loads((out / "training.json").read_text())["init"]
    assert init == {"path": str(ckpt.resolve()), "sha256": checkpoint_sha256(ckpt)}
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m2"),
                                 "--config", SMALL_JSON, "--init", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--init" in result.output
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m2.partial").exists()
    with pytest.raises(TrainError, match="none of its weights fit"):
        wider = FusionConfig.ablation("gnn_only", n_classes=4, **{**SMALL, "d": 32, "heads": 2})
        init_from_checkpoint(Classifier.create(wider, "wxyz").model, str(ckpt), list("wxyz"))


def test_init_bundled_names_the_bundled_model_from_any_directory(data, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)                      # not the repository root
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m"), "--epochs",
                                 "1", "--batch-size", "16", "--config", SMALL_JSON,
                                 "--init", "bundled"])
    assert str(BUNDLED_MODEL) in result.output, result.output


def test_fit_ood_sets_a_new_threshold_without_touching_the_weights(ckpt, data, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(ckpt, copy)
    weights = (copy / "model.safetensors").read_bytes()
    result = runner.invoke(app, ["fit-ood", str(copy), str(data), "--quantile", "0.9"])
    assert result.exit_code == 0, result.output
    meta = read_meta(copy)
    assert meta["ood"]["quantile"] == 0.9 and meta["ood"]["threshold"] > 0
    assert (copy / "model.safetensors").read_bytes() == weights
    fold = json.loads((copy / "training_fold.json").read_text())
    assert fold["ood_threshold"] == meta["ood"]["threshold"]
    assert Classifier.load(copy).ood.quantile == 0.9


def test_fit_ood_refuses_a_dataset_the_checkpoint_was_not_trained_on(ckpt, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(ckpt, copy)
    other = write_dataset(tmp_path / "other", per_class=3, size=48, seed=9)
    result = runner.invoke(app, ["fit-ood", str(copy), str(other)])
    assert result.exit_code == 2 and "not the dataset" in result.output
    assert read_meta(copy) == read_meta(ckpt)
