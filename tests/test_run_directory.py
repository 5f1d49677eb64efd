"""The run-directory format module on real files: atomicity, torn tails, errors."""

import json

import numpy as np
import pytest

from kcallbacks import run_format as rd
from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import RunDirectoryError
from kcallbacks.run_reader import load_run


def test_missing_path_and_non_run_directory_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RunDirectoryError, match="nowhere: no such run directory"):
        load_run(missing)
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunDirectoryError, match=r"plain: not a run directory \(no run.json\)"):
        load_run(tmp_path / "plain")


def test_corrupted_and_future_manifests_are_clear_errors(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    (tmp_path / "run" / "run.json").write_bytes(b'{"schema_version": 1, "sta')
    with pytest.raises(RunDirectoryError, match="run.json: corrupted manifest"):
        load_run(run.path)
    (tmp_path / "run" / "run.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(RunDirectoryError, match="schema version 99 is newer"):
        load_run(run.path)


def test_torn_history_line_is_skipped_with_a_warning(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    for epoch in range(3):
        run.append_history({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    with open(run.file(rd.HISTORY_JSONL), "ab") as f:
        f.write(b'{"epoch": 3, "lo')
    loaded = load_run(run.path)
    assert loaded.history["epoch"].tolist() == [0, 1, 2]
    assert loaded.warnings == ["history.jsonl: ignored a torn last line (line 4)"]

    # Truncating for a resume also clears the torn tail.
    assert run.truncate_history(2) == 1
    assert load_run(run.path).warnings == []
    assert load_run(run.path).history["epoch"].tolist() == [0, 1]


def test_garbage_inside_an_event_log_is_skipped(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    run.append_event("resumed", epoch=1)
    with open(run.file(rd.EVENTS_JSONL), "ab") as f:
        f.write(b"\x00\xff\xfe binary junk\n")
    run.append_event("lr_reduced", epoch=2, old=0.1, new=0.05)
    loaded = load_run(run.path)
    assert loaded.events["type"].tolist() == ["resumed", "lr_reduced"]
    assert loaded.events["new"].iloc[1] == 0.05
    assert loaded.warnings == ["events.jsonl: ignored unreadable line 2"]


def test_batch_log_round_trip_torn_record_and_truncation(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    dtype = run.open_batch_log(["accuracy"])
    records = np.zeros(10, dtype=dtype)
    records["step"] = np.arange(10)
    records["loss"] = np.linspace(1, 0, 10)
    records["accuracy"] = 0.5
    run.append_batches(records)
    with open(run.file(rd.BATCHES_BIN), "ab") as f:
        f.write(b"\x01\x02\x03")  # a record cut short by a crash

    loaded = load_run(run.path)
    assert loaded.batches["step"].tolist() == list(range(10))
    np.testing.assert_allclose(loaded.batches["loss"], records["loss"])
    assert loaded.warnings == ["batches.bin: ignored a torn last record (3 bytes)"]

    assert run.truncate_batches(from_step=6) == 4
    assert load_run(run.path).batches["step"].tolist() == list(range(6))
    assert load_run(run.path).warnings == []

    with pytest.raises(RunDirectoryError, match="per-batch log has columns"):
        run.open_batch_log(["precision"])


def test_empty_logs_give_empty_frames(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    loaded = load_run(run.path)
    assert loaded.history.empty and loaded.batches.empty and loaded.events.empty
    assert "loss" in loaded.batches.columns and "type" in loaded.events.columns
    assert loaded.manifest["status"] == "created"


def test_an_event_after_a_torn_line_is_not_lost(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    run.append_event("resumed", epoch=1)
    with open(run.file(rd.EVENTS_JSONL), "ab") as f:
        f.write(b'{"type": "checkpoint_sa')  # a crash in the middle of an append
    run.append_event("lr_reduced", epoch=2, old=0.1, new=0.05)
    loaded = load_run(run.path)
    assert loaded.events["type"].tolist() == ["resumed", "lr_reduced"]
    assert loaded.warnings == ["events.jsonl: ignored unreadable line 2"]
