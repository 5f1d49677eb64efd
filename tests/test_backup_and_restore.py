"""BackupAndRestore: SIGKILLed runs, restarted until done, end exactly like an uninterrupted run."""

import os

import keras
import numpy as np
import pandas as pd
import pytest

import kcallbacks
from kcallbacks import run_format, snapshots
from kcallbacks.run_directory import read_checkpoint_index
from resume_harness import (
    final_weights, kill_during_snapshot_write, kill_when_line, run_to_completion,
)
from training import InterruptAt, digits_data, digits_model

SUITE = os.environ.get("KC_RESUME_SUITE", "full")


def assert_same_run(reference_dir, resumed_dir):
    reference, resumed = kcallbacks.load_run(reference_dir), kcallbacks.load_run(resumed_dir)
    columns = [c for c in reference.history.columns if c not in ("wall_time", "epoch_time")]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
    pd.testing.assert_frame_equal(
        resumed.batches.drop(columns=[]), reference.batches.drop(columns=[])
    )
    for ours, theirs in zip(final_weights(resumed_dir), final_weights(reference_dir)):
        np.testing.assert_array_equal(ours, theirs)
    assert resumed.manifest["status"] == reference.manifest["status"]
    assert resumed.manifest["last_epoch"] == reference.manifest["last_epoch"]
    assert resumed.warnings == []
    if SUITE == "full":
        # The same checkpoints kept, the same best one, the same events.
        assert final_checkpoints(resumed_dir) == final_checkpoints(reference_dir)
        assert read_checkpoint_index(os.path.join(resumed_dir, "checkpoints")) == \
            read_checkpoint_index(os.path.join(reference_dir, "checkpoints"))
        for kind in ("lr_reduced", "early_stop"):
            ours = resumed.events[resumed.events["type"] == kind].drop(columns=["time"]).dropna(axis=1, how="all")
            theirs = reference.events[reference.events["type"] == kind].drop(columns=["time"]).dropna(axis=1, how="all")
            pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
    return reference, resumed


def final_checkpoints(run_dir):
    directory = os.path.join(run_dir, "checkpoints")
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def test_epoch_backups_resume_exactly_after_sigkills(tmp_path):
    epochs = 12
    extra = ("--suite", SUITE, "--ballast", "24")
    run_to_completion(tmp_path / "reference", epochs, "epoch", *extra)

    run_dir = tmp_path / "resumed"
    kill_when_line(run_dir, epochs, "epoch", lambda l: l == "EPOCH_DONE 1", *extra, delay=0.01)
    leftovers = kill_during_snapshot_write(run_dir, epochs, "epoch", *extra)
    assert leftovers, "the kill should have left a temporary snapshot behind"
    # The newest complete snapshot is still loadable after that kill.
    (sequence, path), *_ = snapshots.list_snapshots(run_dir / "backup")
    state, arrays = snapshots.read_snapshot(path)
    assert state["epoch"] >= 1 and "model|0" in arrays
    kill_when_line(run_dir, epochs, "epoch", lambda l: l.startswith("BATCH 5 3"), *extra)
    out = run_to_completion(run_dir, epochs, "epoch", *extra)
    assert "already finished" not in out

    reference, resumed = assert_same_run(tmp_path / "reference", run_dir)
    np.testing.assert_array_equal(resumed.history["learning_rate"], reference.history["learning_rate"])
    if SUITE == "full":
        # The plateau schedule and early stopping really acted in this run.
        assert reference.history["learning_rate"].nunique() > 1
        assert reference.manifest["status"] == "stopped_early"
    resumes = resumed.events[resumed.events["type"] == "resumed"]
    assert len(resumes) == 3
    assert len(resumed.manifest["attempts"]) == 4

    # Running the finished script again trains nothing and says so.
    again = run_to_completion(run_dir, epochs, "epoch", *extra)
    assert "already finished" in again
    np.testing.assert_array_equal(final_weights(run_dir)[0], final_weights(tmp_path / "reference")[0])
    assert_same_run(tmp_path / "reference", run_dir)


def test_batch_backups_resume_mid_epoch_exactly(tmp_path):
    epochs = 6
    extra = ("--suite", SUITE)
    run_to_completion(tmp_path / "reference", epochs, 5, *extra)

    run_dir = tmp_path / "resumed"
    # 9 batches per epoch; backups every 5 batches fall mid-epoch.
    kill_when_line(run_dir, epochs, 5, lambda l: l == "BATCH 1 7", *extra)
    snapshot_state, _ = snapshots.read_snapshot(snapshots.list_snapshots(run_dir / "backup")[0][1])
    # The newest complete snapshot is mid-epoch ((1, 6), or (1, 1) if the
    # kill came while (1, 6) was still being written in the background).
    assert (snapshot_state["epoch"], snapshot_state["batch"]) in [(1, 1), (1, 6)]
    kill_when_line(run_dir, epochs, 5, lambda l: l == "BATCH 3 8", *extra)
    run_to_completion(run_dir, epochs, 5, *extra)

    reference, resumed = assert_same_run(tmp_path / "reference", run_dir)
    resumes = resumed.events[resumed.events["type"] == "resumed"]
    assert (resumes["batch"] > 0).all()


def test_mismatched_model_is_a_clear_error_and_nothing_is_loaded(tmp_path):
    x, y = digits_data(128)
    backup = tmp_path / "backup"
    digits_model().fit(x, y, epochs=1, verbose=0, callbacks=[kcallbacks.BackupAndRestore(backup)])

    keras.utils.set_random_seed(5)
    other = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16), keras.layers.Dense(10)])
    other.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(kcallbacks.SnapshotMismatchError, match=r"model variable 0 .* is \[64, 16\]"):
        other.fit(x, y, epochs=1, verbose=0, callbacks=[kcallbacks.BackupAndRestore(backup)])
    for a, b in zip(other.get_weights(), before):
        np.testing.assert_array_equal(a, b)

    sgd = digits_model()
    sgd.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(kcallbacks.SnapshotMismatchError, match="optimizer Adam, this model uses SGD"):
        sgd.fit(x, y, epochs=1, verbose=0, callbacks=[kcallbacks.BackupAndRestore(backup)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
        kcallbacks.BackupAndRestore("")
    with pytest.raises(ValueError, match="save_freq must be 'epoch', a positive integer or False"):
        kcallbacks.BackupAndRestore("b", save_freq="batch")
    with pytest.raises(ValueError, match="save_freq"):
        kcallbacks.BackupAndRestore("b", save_freq=0)


def test_more_epochs_continue_a_finished_run(tmp_path):
    x, y = digits_data(128)
    run_dir = tmp_path / "run"

    def suite():
        return [kcallbacks.HistoryLogger(run_dir), kcallbacks.BackupAndRestore(run_dir / "backup")]

    digits_model().fit(x, y, epochs=2, verbose=0, callbacks=suite())
    # The same run asked for no more epochs: nothing is trained.
    digits_model().fit(x, y, epochs=2, verbose=0, callbacks=suite())
    assert kcallbacks.load_run(run_dir).history["epoch"].tolist() == [0, 1]
    # Asked for more: it continues from the finished state at epoch 2.
    model = digits_model()
    model.fit(x, y, epochs=4, verbose=0, callbacks=suite())
    run = kcallbacks.load_run(run_dir)
    assert run.history["epoch"].tolist() == [0, 1, 2, 3]
    assert run.events["type"].tolist() == ["resume_skipped", "resumed"]
    assert int(model.optimizer.iterations.numpy()) == 4 * 4  # 128 samples / 32, 4 epochs


def test_double_checkpoint_falls_back_to_the_previous_snapshot(tmp_path):
    x, y = digits_data(128)
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        digits_model().fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[
            kcallbacks.BackupAndRestore(backup, save_freq=2, double_checkpoint=True, async_save=False),
            InterruptAt(batch=4, error=KeyboardInterrupt)])
    # Two snapshots, after batches 2 and 4 of epoch 0; the newer one damaged.
    (newest, newest_path), (older, older_path) = snapshots.list_snapshots(backup)
    with open(os.path.join(newest_path, run_format.SNAPSHOT_ARRAYS), "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="cannot read"):
        digits_model().fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[
            kcallbacks.BackupAndRestore(backup, double_checkpoint=True, run_dir=tmp_path / "run")])
    resumed = kcallbacks.load_run(tmp_path / "run").events
    assert resumed[["type", "epoch", "batch"]].values.tolist() == [["resumed", 0, 2]]


def test_a_resume_point_past_the_epochs_end_is_a_clear_error(tmp_path):
    x, y = digits_data(128)
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        digits_model().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[
            kcallbacks.BackupAndRestore(backup, save_freq=5, async_save=False), InterruptAt(batch=6, error=KeyboardInterrupt)])
    # Same run, but now an epoch is 2 batches: resuming after batch 5 is impossible.
    with pytest.raises(ValueError, match="resumes epoch 0 after batch 5, but this epoch ended first"):
        digits_model().fit(x, y, epochs=2, batch_size=64, verbose=0,
                           callbacks=[kcallbacks.BackupAndRestore(backup, save_freq=5)])
