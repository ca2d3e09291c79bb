"""Session files: frames, decision records and provenance go in, come back out unchanged, and
the pycroscopy readers (SciFiReaders, DTMicroscope's loader) see every frame as a sidpy
IMAGE Dataset in frame order."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.session_file.decision_record import RECORD_VERSION, DecisionRecord, Route
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter


def make_frame(i: int, size: int = 64, label: str = "Fibres") -> Frame:
    rng = np.random.default_rng(i)
    return Frame(
        image=rng.random((size, size), dtype=np.float32) * 100,
        instrument_id="twin",
        settings=ImagingSettings(fov=10e-6 * (i + 1), pixels=size, dwell=1e-6 * (i + 1),
                                 detector="SE", defocus=1e-7 * i),
        stage=StagePosition(x=1e-5 * i, y=-2e-5 * i, z=1e-6, tilt=0.5),
        sequence=i,
        original_metadata={"vendor": "twin", "hv": 5000.0, "optional": None},
        evaluation={"label": label, "class_fractions": {label: 0.9, "Powder": 0.1}},
    )


def make_record(frame: Frame, label: str, route: str = "confident", **extra) -> DecisionRecord:
    """A typed record, from the dict layout the agent wrote before records were typed."""
    return DecisionRecord.from_stored({"frame_id": frame.frame_id, "sequence": frame.sequence,
            "position": {"x": frame.stage.x, "y": frame.stage.y}, "tile": {"row": 0, "col": 1},
            "prediction": {"label": label, "confidence": 0.93,
                           "probabilities": {label: 0.93, "Powder": 0.07},
                           "top_k": [[label, 0.93], ["Powder", 0.07]],
                           "conformal_set": [label]},
            "label": label, "route": route, "rescans": [], "adjudication": None,
            "human": None, "quality": {"sharpness": 1.5, "snr": 12.0, "drift_px": 0.2,
                                        "ok": True},
            "timings": {"acquire_s": 0.1, "classify_s": 0.2, "total_s": 0.3}, **extra})


PROVENANCE = {
    "session_id": "s-1",
    "instrument": {"uri": "twin", "identity": "twin seed=0"},
    "model": {"checkpoint": "models/bundled/sem_twin", "sha256": "ab" * 32,
              "class_names": ["Fibres", "Powder"]},
    "policy": {"confidence": 0.8}, "envelope": {"max_moves": 100},
}


@pytest.fixture
def session(tmp_path: Path) -> tuple[Path, list[Frame], list[DecisionRecord]]:
    path = tmp_path / "session.h5"
    frames = [make_frame(i) for i in range(3)]
    records = [make_record(frames[0], "Fibres"),
               make_record(frames[1], "Powder", route="human",
                           human={"operator": "ana", "time": "t", "proposal": "Fibres",
                                  "decision": "relabel", "label": "Powder", "note": "",
                                  "changed": True}),
               make_record(frames[2], "Fibres", route="rescan",
                           rescans=[{"settings": {"dwell": 4e-6}, "reason": "low snr",
                                     "quality": {"snr": 3.0}, "prediction": {}}])]
    with SessionWriter(path, PROVENANCE) as writer:
        for frame, record in zip(frames, records, strict=True):
            assert writer.write_frame(frame, record) is True
    return path, frames, records


def test_round_trip_of_frames_records_and_provenance(session) -> None:
    path, frames, records = session
    with SessionReader(path) as reader:
        assert reader.frame_ids == [f.frame_id for f in frames]
        back = list(reader.frames())
        prov = reader.provenance
    for (frame, record), original, original_record in zip(back, frames, records, strict=True):
        np.testing.assert_array_equal(frame.image, original.image)
        assert frame.image.dtype == np.float32
        assert frame.settings == original.settings
        assert frame.stage == original.stage
        assert (frame.frame_id, frame.sequence, frame.instrument_id, frame.timestamp) == (
            original.frame_id, original.sequence, original.instrument_id, original.timestamp)
        assert frame.original_metadata == original.original_metadata
        assert frame.evaluation == original.evaluation
        assert record == original_record
    assert prov["session_id"] == "s-1"
    assert prov["model"] == PROVENANCE["model"]
    assert prov["status"] == "completed" and prov["ended"] and prov["started"]
    assert {"python", "h5py", "hdf5", "sidpy", "pyNSID"} <= set(prov["software"])


def test_summary_counts_labels_routes_escalations_and_accuracy(session) -> None:
    path, frames, _ = session
    with SessionReader(path) as reader:
        summary = reader.summary()
    assert summary["session_id"] == "s-1" and summary["status"] == "completed"
    assert summary["frames"] == 3
    assert summary["frame_ids"] == [f.frame_id for f in frames]
    assert summary["labels"] == ["Fibres", "Powder", "Fibres"]
    assert summary["routes"] == ["confident", "human", "rescan"]
    assert summary["escalations"] == 2 and summary["approvals"] == 1
    assert summary["approval_decisions"] == {"relabel": 1} and summary["human_changed"] == 1
    assert summary["accuracy"] == pytest.approx(2 / 3)   # truth is Fibres for every frame


def test_rewriting_a_frame_is_refused_and_resume_appends(session) -> None:
    path, frames, records = session
    writer = SessionWriter(path, {"session_id": "s-1", "note": "resumed",
                                  "checkpoint": Path("/models/x")})   # paths stored as text
    assert writer.frame_ids() == [f.frame_id for f in frames]
    assert writer.has_frame(frames[1].frame_id)
    assert writer.write_frame(frames[1], records[1]) is False
    extra = make_frame(7)
    assert writer.write_frame(extra, make_record(extra, "Powder")) is True
    writer.close("interrupted", "operator stop")
    with SessionReader(path) as reader:
        assert reader.frame_ids == [f.frame_id for f in frames] + [extra.frame_id]
        assert reader.provenance["status"] == "interrupted"
        assert reader.provenance["reason"] == "operator stop"
        assert reader.provenance["note"] == "resumed" and len(reader.provenance["resumed"]) == 1
        assert reader.provenance["checkpoint"] == "/models/x"


def test_a_torn_link_that_resolves_to_a_later_frame_is_not_a_second_frame(session) -> None:
    """A kill mid-flush can leave a channel link pointing past the file's end that HDF5
    cannot remove; once a resumed writer stores a frame at that address, the old link
    resolves to the new frame (seen in the SIGKILL campaign: the frame counted twice). Such
    an alias (its index attribute names another channel) is neither read nor indexed."""
    path, frames, _ = session
    with h5py.File(path, "r+") as f:
        f["Measurement_000/Channel_000009"] = f["Measurement_000/Channel_000001"]  # the alias
    with SessionReader(path) as reader:
        assert reader.frame_ids == [f.frame_id for f in frames]
        assert [r.frame_id for r in reader.records()] == [f.frame_id for f in frames]
    writer = SessionWriter(path, {"session_id": "s-1"})
    assert writer.frame_ids() == [f.frame_id for f in frames]
    extra = make_frame(7)
    assert writer.write_frame(extra, make_record(extra, "Powder")) is True
    writer.close("completed", "done")
    with SessionReader(path) as reader:
        assert reader.summary()["frames"] == 4
        assert reader.frame_ids == [f.frame_id for f in frames] + [extra.frame_id]


def test_reader_never_modifies_the_file(session) -> None:
    path, _, _ = session
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with SessionReader(path) as reader:
        list(reader.frames())
        reader.summary()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_scifireaders_reads_every_frame_as_a_sidpy_image(scifi_read, session) -> None:
    import sidpy

    path, frames, _ = session
    datasets = scifi_read(path)
    assert list(datasets) == ["Channel_000", "Channel_001", "Channel_002"]
    for key, frame in zip(datasets, frames, strict=True):
        ds = datasets[key]
        assert isinstance(ds, sidpy.Dataset)
        assert ds.data_type == sidpy.DataType.IMAGE
        assert (ds.quantity, ds.units) == ("intensity", "a.u.")
        np.testing.assert_allclose(np.array(ds), frame.image)
        for name in ("x", "y"):
            dim = getattr(ds, name)
            assert (dim.units, dim.quantity) == ("m", "distance")
            assert dim.dimension_type == sidpy.DimensionType.SPATIAL
            assert dim.values[1] - dim.values[0] == pytest.approx(frame.settings.pixel_size)
        assert ds.metadata["frame_id"] == frame.frame_id
        assert ds.metadata["stage"]["x"] == pytest.approx(frame.stage.x)
        assert ds.original_metadata["vendor"] == "twin"


def test_dtmicroscope_loader_serves_the_first_frame_as_overview(scifi_read, session) -> None:
    """DTMicroscope STEM._load_dataset: NSIDReader(path).read(), keyed Channel_000...;
    get_overview_image() returns np.array(dataset['Channel_000'])."""
    path, frames, _ = session
    dataset = scifi_read(path)
    if not hasattr(dataset, "keys"):
        dataset = {f"Channel_{i:03}": item for i, item in enumerate(dataset)}
    overview = np.array(dataset["Channel_000"])
    np.testing.assert_allclose(overview, frames[0].image)
    images = [k for k, v in dataset.items() if v.data_type.name == "IMAGE"]
    assert len(images) == len(frames)


def test_awkward_instrument_metadata_is_kept_exactly_and_written_for_sidpy(
        scifi_read, tmp_path: Path) -> None:
    import datetime

    frame = make_frame(0)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    frame.original_metadata = {"a/b": 1, "": 2, "mixed": [1, "two", None],
                               "nested": {"rows": [{"z": None}], "empty": []},
                               "acquired": when, "quantity": "HAADF", "units": "counts"}
    path = tmp_path / "awkward.h5"
    with SessionWriter(path, {}) as writer:
        assert writer.write_frame(frame, make_record(frame, "Tips"))
    with SessionReader(path) as reader:
        back = reader.frame(0)
    assert back.original_metadata == {**frame.original_metadata, "acquired": str(when)}
    ds = scifi_read(path)["Channel_000"]
    assert (ds.quantity, ds.units) == ("HAADF", "counts")         # as the instrument said
    assert ds.original_metadata["a_b"] == 1
    assert ds.original_metadata["mixed"] == '[1, "two", null]'


def test_the_dtmicroscope_server_registers_a_session_and_serves_frame_0(session) -> None:
    """Our DTMicroscope-compatible STEM servant (twins.dtm_server) loads the file the way
    DTMicroscope does (NSIDReader, Channel_000...) and answers get_overview_image."""
    from twins.dtm_server import DTMicroscopeService

    path, frames, _ = session
    service = DTMicroscopeService(twin=None, data_root=path.parent)
    service.initialize_microscope("STEM")
    service.register_data(str(path))
    values, shape, _dtype = service.get_overview_image()
    np.testing.assert_allclose(np.asarray(values).reshape(shape), frames[0].image)
    info = dict(service.get_dataset_info())
    assert info["channel_keys"] == ["Channel_000", "Channel_001", "Channel_002"]


def _superblock_end(path: Path, end: int | None = None) -> int:
    """The end of allocation a version-0 HDF5 superblock records (bytes 40-47, what h5py
    writes by default), set to `end` where given."""
    with open(path, "r+b") as raw:
        raw.seek(40)
        recorded = int.from_bytes(raw.read(8), "little")
        if end is not None:
            raw.seek(40)
            raw.write(end.to_bytes(8, "little"))
    return recorded


def test_a_flush_torn_before_its_superblock_resumes_with_every_frame(tmp_path) -> None:
    """A kill inside an HDF5 flush can leave the measurement group's metadata past the end of
    allocation the superblock records (HDF5: "addr overflow"). Resuming moves that end to the
    file's real end, as `h5clear --increment` does, and finds every frame written whole."""
    path, torn = tmp_path / "session.h5", tmp_path / "torn.h5"
    frames = [make_frame(i) for i in range(9)]
    writer = SessionWriter(path, PROVENANCE)
    writer.write_frame(frames[0], make_record(frames[0], "Fibres"))
    end_before = _superblock_end(path)
    for frame in frames[1:]:
        writer.write_frame(frame, make_record(frame, "Fibres"))
    shutil.copy(path, torn)                  # flushed, as on disk when the process dies
    writer.close()
    _superblock_end(torn, end_before)        # ... before the superblock got its new end
    with pytest.raises(RuntimeError, match="addr overflow"), h5py.File(torn, "r") as f:
        list(f["Measurement_000"])
    with SessionWriter(torn, {"session_id": "s-1"}) as resumed:
        assert resumed.frame_ids() == [f.frame_id for f in frames]
        extra = make_frame(9)
        assert resumed.write_frame(extra, make_record(extra, "Powder"))
    with SessionReader(torn) as reader:
        assert reader.frame_ids == [f.frame_id for f in [*frames, extra]]


def test_metadata_past_the_end_that_cannot_be_mended_is_a_corrupt_file_with_a_way_out(
        session, monkeypatch) -> None:
    """Where moving the end does not help, the typed error names the HDF5 tool that may
    recover the file, and the file is closed."""
    from instruments.session_file.layout import SessionFileCorrupt

    path, frames, _ = session

    def overflow(self) -> None:
        raise RuntimeError("Unable to get group info (addr overflow, addr = 15984, size = 328, "
                           "eoa = 15440)")

    monkeypatch.setattr(SessionWriter, "_scan_frames", overflow)
    with pytest.raises(SessionFileCorrupt, match="h5clear --increment"):
        SessionWriter(path, {"session_id": "s-1"})
    monkeypatch.undo()
    with SessionReader(path) as reader:                  # closed again, nothing changed
        assert reader.frame_ids == [f.frame_id for f in frames]


def test_format_1_files_are_read_and_resumed(session) -> None:
    """Format 1 kept frame/record/evaluation as string datasets and built frames under
    /micagent/pending: still read, and a resumed writer appends format-2 frames."""
    import h5py

    path, frames, records = session
    with h5py.File(path, "r+") as f:
        f.attrs["micagent_format_version"] = 1
        for group in f["Measurement_000"].values():
            for name in ("frame", "record", "evaluation"):
                text = group.attrs.pop(name)
                group.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))
        f.create_group("micagent/pending/some-uuid/Image")     # a crash mid-frame
    with SessionReader(path) as reader:
        back = list(reader.frames())
        assert [r for _, r in back] == records
        assert [f.evaluation for f, _ in back] == [f.evaluation for f in frames]
        assert reader.frame_metadata()[1]["frame_id"] == frames[1].frame_id
    with SessionWriter(path, {"session_id": "s-1"}) as writer:
        extra = make_frame(8)
        assert writer.write_frame(extra, make_record(extra, "Tips"))
    with SessionReader(path) as reader:
        assert reader.frame_ids == [f.frame_id for f in frames] + [extra.frame_id]
        assert reader.records()[-1] == make_record(extra, "Tips")
    with h5py.File(path, "r") as f:
        assert len(f["micagent/pending"]) == 0 and f.attrs["micagent_format_version"] == 2


# A record exactly as the agent wrote it before records were typed (format 2, record version 1:
# an untyped dict, no "version" key), after a rescan, an adjudication and a human decision.
V1_RECORD = {
    "sequence": 4, "position": {"x": 1e-5, "y": -2e-5}, "tile": None,
    "prediction": {"label": "Powder", "confidence": 0.62,
                   "probabilities": {"Fibres": 0.38, "Powder": 0.62},
                   "top_k": [["Powder", 0.62], ["Fibres", 0.38]],
                   "conformal_set": ["Powder", "Fibres"], "entropy": 0.66, "lmm_label": None,
                   "ood": {"score": 2.5, "threshold": 4.0, "unknown": False,
                           "method": "mahalanobis"}},
    "label": "Fibres", "route": "human",
    "rescans": [{"settings": {"fov": 2e-5, "pixels": 256, "dwell": 2e-6, "detector": "SE",
                              "defocus": 0.0, "beam_energy": 5e3, "beam_current": 1e-10},
                 "new_settings": {"fov": 2e-5, "pixels": 256, "dwell": 8e-6, "detector": "SE",
                                  "defocus": 0.0, "beam_energy": 5e3, "beam_current": 1e-10},
                 "reason": "noise", "quality": {"sharpness": 0.1, "snr": 0.1, "drift_px": 0.0,
                                                "ok": False, "failures": ["noise"]},
                 "prediction": {}, "adaptation": {"dwell": 8e-6}, "adapt_s": 0.001,
                 "thumbnail": "/tmp/x.png"}],
    "quality": {"sharpness": 0.1, "snr": 3.0, "drift_px": 0.4, "ok": True, "failures": []},
    "adjudication": {"adjudicator": "offline-knn", "demonstrations": ["d1", "d2"],
                     "prompt_hash": "ab12", "answer": {"label": "Fibres", "confidence": 0.7,
                                                       "rationale": "nearest"},
                     "error": None, "tokens": 0, "cached": False, "attempts": [],
                     "reclassified": {}},
    "human": {"operator": "ana", "time": 1795464000.0, "proposal": "Powder",
              "decision": "relabel", "label": "Fibres", "note": "", "changed": True},
    "timings": {"acquire_s": 0.2, "classify_s": 0.03, "total_s": None},
    "settings": {"fov": 2e-5, "pixels": 256, "dwell": 8e-6, "detector": "SE", "defocus": 0.0,
                 "beam_energy": 5e3, "beam_current": 1e-10},
}


def test_records_written_before_records_were_typed_are_read_migrated(tmp_path: Path) -> None:
    """A file whose record attribute holds the old untyped layout (written here explicitly, as
    the earlier agent did) reads back as typed records of the current version; resuming
    appends typed ones."""
    import h5py

    from instruments.session_file.layout import to_json

    path = tmp_path / "old.h5"
    frame = make_frame(4)
    with SessionWriter(path, PROVENANCE) as writer:
        writer.write_frame(frame, make_record(frame, "Fibres"))
    with h5py.File(path, "r+") as f:
        group = f["Measurement_000/Channel_000000"]
        group.attrs["record"] = to_json({**V1_RECORD, "frame_id": frame.frame_id}, "record")
    with SessionReader(path) as reader:
        (record,) = reader.records()
        summary = reader.summary()
    assert record.version == RECORD_VERSION and record.head_version is None
    assert record.frame_id == frame.frame_id
    assert record.route is Route.HUMAN and record.human.decision == "relabel"
    assert record.prediction.ood.score == 2.5 and record.prediction.top_k[0] == ("Powder", 0.62)
    assert record.rescans[0].prediction is None                  # "{}" meant: not there
    assert record.rescans[0].new_settings.dwell == 8e-6
    assert record.adjudication.reclassified is None and record.adjudication.answer.label == "Fibres"
    assert record.timings.total_s is None and record.classifier_label == "Powder"
    assert summary["routes"] == ["human"] and summary["accuracy"] == 1.0
    assert summary["accuracy_classifier"] == 0.0 and summary["human_changed"] == 1
    with SessionWriter(path, {"session_id": "s-1"}) as writer:
        extra = make_frame(5)
        writer.write_frame(extra, make_record(extra, "Tips"))
    with h5py.File(path, "r") as f:
        stored = f["Measurement_000/Channel_000001"].attrs["record"]
    assert f'"version":{RECORD_VERSION}' in stored


def test_a_version_2_record_reads_as_the_current_version_with_its_rescan_effect_typed() -> None:
    """Version 2 kept undeclared keys: the rescan's `effect` (now a field), and in checkpoints
    the working-only `started` (now not part of the record at all)."""
    from instruments.session_file.decision_record import DecisionRecord

    stored = {"version": 2, "frame_id": "f-2", "label": "Tips", "route": "rescan",
              "started": 1795464000.0,
              "rescans": [{"reason": "noise", "effect": "improved", "adapt_s": 0.01}]}
    for record in (DecisionRecord.from_stored(stored), DecisionRecord(**stored)):
        assert record.version == RECORD_VERSION and record.rescans[0].effect == "improved"
        assert "started" not in record.model_dump()
        assert DecisionRecord.from_json(record.to_json()) == record


def test_a_record_of_an_unknown_version_or_shape_is_a_corrupt_file(tmp_path: Path) -> None:
    import h5py

    from instruments.session_file.layout import SessionFileCorrupt, to_json

    path = tmp_path / "odd.h5"
    frame = make_frame(0)
    with SessionWriter(path, PROVENANCE) as writer:
        writer.write_frame(frame, make_record(frame, "Fibres"))
    for bad, message in (({"version": 99}, "version 99"), ([1, 2], "JSON object"),
                         ({"version": 2, "route": "sideways"}, "schema"),
                         ({"version": 3, "colour": "red"}, "schema"),
                         ({"version": 3, "rescans": [{"effect": "maybe"}]}, "schema")):
        with h5py.File(path, "r+") as f:
            f["Measurement_000/Channel_000000"].attrs["record"] = to_json(bad, "record")
        with SessionReader(path) as reader, pytest.raises(SessionFileCorrupt, match=message):
            reader.records()


def test_each_frame_reads_as_one_flat_row_and_inspect_counts_those_rows(session) -> None:
    """The row is what inspect, the report and replay read of a record: final label and
    route, the classifier's own top-1, escalations, truth; the stored frame's stage and field
    of view where the record has no position."""
    import h5py

    from instruments.session_file.layout import to_json

    path, frames, records = session
    bare = DecisionRecord(frame_id=frames[0].frame_id, label="Fibres", route=Route.CONFIDENT,
                          prediction={"label": "Fibres", "confidence": float("nan")})
    with h5py.File(path, "r+") as f:
        f["Measurement_000/Channel_000000"].attrs["record"] = to_json(
            bare.model_dump(mode="json"), "record")
    with SessionReader(path) as reader:
        rows, summary = reader.rows(), reader.summary()
    first, human, rescanned = rows
    assert (first.x, first.y, first.fov) == (frames[0].stage.x, frames[0].stage.y,
                                              frames[0].settings.fov)
    assert first.confidence is None and first.predicted == "Fibres" and not first.escalated
    assert human.human.operator == "ana" and human.label == "Powder"
    assert human.predicted == "Powder" and human.truth == "Fibres"
    assert rescanned.rescans == 1 and rescanned.route == "rescan" and rescanned.index == 2
    assert rescanned.top_k == (("Fibres", 0.93), ("Powder", 0.07))
    assert summary["labels"] == [r.label for r in rows]
    assert summary["escalations"] == 2 and summary["accuracy"] == pytest.approx(2 / 3)
