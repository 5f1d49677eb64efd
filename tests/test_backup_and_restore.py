"""BackupAndRestore: SIGKILLed runs, restarted until done, end exactly like an uninterrupted run.

The kill-and-resume tests run on TensorFlow, JAX and PyTorch (KERAS_BACKEND;
the scripts inherit it). On CPU each backend is deterministic with
keras.utils.set_random_seed (and TensorFlow's op determinism), so a resumed
run must match the uninterrupted one bit for bit.
"""

import json
import os
import random

import keras
import numpy as np
import pandas as pd
import pytest

import kcallbacks
from kcallbacks import _random_states, run_format, snapshots
from kcallbacks.run_directory import read_checkpoint_index
from resume_harness import (
    final_weights, kill_during_snapshot_write, kill_when_line, run_to_completion,
)
from training import InterruptAt, Interrupted, digits_data, digits_model

SUITE = os.environ.get("KC_RESUME_SUITE", "full")
BACKEND = keras.backend.backend()
# KC_RESUME_BATCH_LOSSES=0 leaves BatchLossTracker out of the scripted runs
# (for a backend it does not support yet); their per-batch logs are then
# not compared.
BATCH_LOSSES = os.environ.get("KC_RESUME_BATCH_LOSSES", "1") != "0"
SCRIPT_OPTIONS = ("--suite", SUITE) + (() if BATCH_LOSSES else ("--no-batch-losses",))
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow backend only")


def assert_same_run(reference_dir, resumed_dir):
    reference, resumed = kcallbacks.load_run(reference_dir), kcallbacks.load_run(resumed_dir)
    columns = [c for c in reference.history.columns if c not in ("wall_time", "epoch_time")]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
    if BATCH_LOSSES:
        pd.testing.assert_frame_equal(resumed.batches, reference.batches)
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
            # Integer columns read as floats where other event types lack them.
            pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True),
                                          check_dtype=False)
    return reference, resumed


def final_checkpoints(run_dir):
    directory = os.path.join(run_dir, "checkpoints")
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


@pytest.mark.all_backends
def test_epoch_backups_resume_exactly_after_sigkills(tmp_path):
    epochs = 12
    # An unseeded Dropout: on PyTorch its masks come from torch's global
    # generator, which must be restored too.
    extra = (*SCRIPT_OPTIONS, "--ballast", "24", "--dropout", "unseeded")
    run_to_completion(tmp_path / "reference", epochs, "epoch", *extra)

    run_dir = tmp_path / "resumed"
    # Killed at an epoch's end once a snapshot is complete (its background
    # write can outlast a fast epoch, as on JAX).
    kill_when_line(run_dir, epochs, "epoch", lambda l: l.startswith("EPOCH_DONE") and bool(
        snapshots.list_snapshots(run_dir / "backup")), *extra, delay=0.01)
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


@pytest.mark.all_backends
@pytest.mark.parametrize("dropout", [
    "unseeded",
    # Only PyTorch draws a seeded Dropout's masks otherwise (from the layer's
    # seed variable, not torch's generator); elsewhere both use that variable.
    pytest.param("seeded", marks=pytest.mark.skipif(
        BACKEND != "torch", reason="the same path as unseeded off PyTorch")),
])
def test_batch_backups_resume_mid_epoch_exactly(tmp_path, dropout):
    epochs = 6
    extra = (*SCRIPT_OPTIONS, "--dropout", dropout)
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
    # Interrupted after its first epoch's backup: the next fit of this
    # process is the same fit of the program, and restores that backup.
    # (A finished fit would make the next one a new fit: test_fit_sequence.)
    with pytest.raises(Interrupted):
        digits_model().fit(x, y, epochs=2, verbose=0,
                           callbacks=[kcallbacks.BackupAndRestore(backup), InterruptAt(1)])

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


# --- random generators ---------------------------------------------------------


def dropout_model(seed=1, steps_per_execution=1):
    """The digits model with an unseeded Dropout, built after seeding every
    generator with `seed`."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.4),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


@pytest.mark.all_backends
@pytest.mark.parametrize("save_freq, steps_per_execution, shuffle", [
    ("epoch", 1, False),
    (3, 1, False),
    pytest.param(3, 3, False, marks=pytest.mark.skipif(
        BACKEND == "torch", reason="PyTorch trains one step per execution")),
    # Array shuffling draws from NumPy's generator on JAX and torch's on
    # PyTorch; TensorFlow's tf.data shuffle has op-level state, not restorable.
    pytest.param("epoch", 1, True, marks=pytest.mark.skipif(
        BACKEND == "tensorflow", reason="TensorFlow's shuffle state cannot be restored")),
])
def test_unseeded_dropout_resumes_exactly_from_fresh_random_states(
    tmp_path, save_freq, steps_per_execution, shuffle
):
    """A restarted script seeds every generator afresh and builds the model
    again; the snapshot must put back the generators the uninterrupted run
    had reached, at the moment it was taken. (On PyTorch an unseeded Dropout
    draws from torch's global generator: without it, the resumed run
    diverges at its first epoch; and each epoch's data loader draws from it
    before a mid-epoch resume point.)"""
    x, y = digits_data(192)  # 6 batches an epoch
    fit = dict(x=x, y=y, epochs=4, batch_size=32, shuffle=shuffle, verbose=0)
    reference_model = dropout_model(steps_per_execution=steps_per_execution)
    reference = reference_model.fit(**fit).history

    backup = tmp_path / "backup"
    # Mid-epoch: stopped after batch 4 (after the call ending with batch 5,
    # with 3 steps a call) of epoch 2, after a backup at its batch 3.
    last_batch = 4 if steps_per_execution == 1 else 5
    interrupt = InterruptAt(epoch=2, batch=None if save_freq == "epoch" else last_batch)
    with pytest.raises(Exception, match="interrupted"):
        dropout_model(steps_per_execution=steps_per_execution).fit(**fit, callbacks=[
            kcallbacks.BackupAndRestore(backup, save_freq=save_freq, async_save=False), interrupt])
    state, _ = snapshots.read_snapshot(snapshots.list_snapshots(backup)[0][1])
    assert (state["epoch"], state["batch"]) == ((2, 0) if save_freq == "epoch" else (2, 3))
    if BACKEND == "torch":
        assert "torch" in state["rng"]

    model = dropout_model(steps_per_execution=steps_per_execution)  # every generator at its start
    resumed = model.fit(**fit, callbacks=[kcallbacks.BackupAndRestore(backup, save_freq=save_freq)])
    assert resumed.history == {key: values[2:] for key, values in reference.items()}
    for ours, theirs in zip(model.get_weights(), reference_model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def draws():
    """One number from each global generator of this process."""
    found = {
        "python": random.random(),
        "numpy": np.random.random(),
        # seed=None: Keras' global SeedGenerator.
        "keras": keras.ops.convert_to_numpy(keras.random.uniform((3,))).tolist(),
    }
    if BACKEND == "torch":
        import torch

        found["torch"] = torch.rand(3).tolist()
        if torch.cuda.is_available():
            found["torch_cuda"] = torch.rand(3, device="cuda").tolist()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        found["tensorflow"] = tf.random.get_global_generator().uniform((3,)).numpy().tolist()
    return found


@pytest.mark.all_backends
def test_random_states_round_trip_through_a_snapshot(tmp_path):
    keras.utils.set_random_seed(3)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.random.set_global_generator(tf.random.Generator.from_seed(3))
    draws()  # every generator made and moved on
    arrays = {}
    saved = snapshots.put_random_states(arrays, _random_states.capture())
    snapshots.write_snapshot(tmp_path, 1, {"format": snapshots.SNAPSHOT_FORMAT, "rng": saved}, arrays)
    expected = draws()
    keras.utils.set_random_seed(99)  # also drops Keras' global SeedGenerator
    draws()

    state, arrays = snapshots.read_snapshot(snapshots.snapshot_path(tmp_path, 1))
    restored = snapshots.get_random_states(state["rng"], arrays)
    assert set(restored) >= set(expected)
    _random_states.restore(restored)
    assert draws() == expected


@pytest.mark.all_backends
def test_a_keras_seed_generator_not_made_yet_is_not_made_by_a_restore():
    keras.utils.clear_session()  # drops Keras' global SeedGenerator (set_random_seed too, since 3.9)
    keras.utils.set_random_seed(4)
    states = _random_states.capture()
    assert states["keras"] is None
    expected = keras.ops.convert_to_numpy(keras.random.uniform((3,)))  # made now, seeded from Python's random
    _random_states.restore(states)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.random.uniform((3,))), expected)


def tuples_as_format_1(value):
    if isinstance(value, tuple):
        return {"tuple": [tuples_as_format_1(v) for v in value]}
    return value


@pytest.mark.all_backends
def test_format_1_snapshots_still_load(tmp_path):
    """A snapshot written before the named generators (format 1: Python's and
    NumPy's states only, NumPy's key as `rng|numpy`, arrays in an npz
    archive) still resumes."""
    x, y = digits_data(128)
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        digits_model().fit(x, y, epochs=3, verbose=0, callbacks=[
            kcallbacks.BackupAndRestore(backup, async_save=False), InterruptAt(epoch=1, error=KeyboardInterrupt)])
    (_, path), = snapshots.list_snapshots(backup)
    state, arrays = snapshots.read_snapshot(path)
    random.seed(11)
    np.random.seed(11)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    # As format 1 wrote them.
    state["format"] = 1
    state["rng"] = {
        "python": tuples_as_format_1(python_state),
        "numpy": [numpy_state[0], *[v.item() if hasattr(v, "item") else v for v in numpy_state[2:]]],
    }
    arrays = {k: v for k, v in arrays.items() if not k.startswith("rng|")}
    arrays["rng|numpy"] = numpy_state[1]
    snapshots.remove_snapshot(path)
    # Formats 1 and 2 kept the arrays in an npz archive.
    os.makedirs(snapshots.snapshot_path(backup, 7))
    np.savez(os.path.join(snapshots.snapshot_path(backup, 7), run_format.SNAPSHOT_ARRAYS_NPZ), **arrays)
    with open(os.path.join(snapshots.snapshot_path(backup, 7), run_format.SNAPSHOT_STATE), "w") as f:
        json.dump(state, f)
    expected = (random.random(), np.random.random())
    random.seed(0)
    np.random.seed(0)

    class Draw(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.drawn = (random.random(), np.random.random())

    draw = Draw()
    model = digits_model()
    model.fit(x, y, epochs=3, verbose=0, callbacks=[kcallbacks.BackupAndRestore(backup), draw])
    assert draw.drawn == expected
    assert int(model.optimizer.iterations.numpy()) == 3 * 4


def test_snapshot_arrays_round_trip_with_their_dtypes_and_shapes(tmp_path):
    import ml_dtypes

    arrays = {
        "model|0": np.arange(12, dtype=np.float32).reshape(3, 4),
        "model|1": np.array(7, dtype=np.int64),  # a scalar
        "optimizer|0": np.zeros((0, 5), dtype=np.float16),  # empty
        "metrics|0": np.array([True, False, True]),
        "rng|numpy|0": np.arange(3, dtype=np.uint32),
        "model|2": np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16),
        "model|3": np.arange(10, dtype=np.float64)[::3],  # not contiguous
    }
    snapshots.write_snapshot(tmp_path, 1, {"format": snapshots.SNAPSHOT_FORMAT}, arrays)
    path = snapshots.snapshot_path(tmp_path, 1)
    state, loaded = snapshots.read_snapshot(path)
    assert "arrays" not in state  # the index is the reader's business
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array)
    # Every array starts aligned, and a short file is refused by name.
    index = json.load(open(os.path.join(path, run_format.SNAPSHOT_STATE)))["arrays"]
    assert all(entry["offset"] % snapshots.ARRAY_ALIGNMENT == 0 for entry in index)
    with open(os.path.join(path, run_format.SNAPSHOT_ARRAYS), "r+b") as f:
        f.truncate(index[-1]["offset"] + 8)
    with pytest.raises(ValueError, match="shorter than its index says.*model\\|3 ends at byte"):
        snapshots.read_snapshot(path)


def test_a_snapshot_from_a_newer_format_is_refused(tmp_path):
    snapshots.write_snapshot(tmp_path, 1, {"format": snapshots.SNAPSHOT_FORMAT + 1}, {})
    with pytest.raises(ValueError, match="newer than this kcallbacks reads"):
        snapshots.read_snapshot(snapshots.snapshot_path(tmp_path, 1))


@tensorflow_only
def test_tensorflow_global_generator_is_made_by_a_restore_where_missing():
    import tensorflow as tf
    from tensorflow.python.ops import stateful_random_ops

    tf.random.set_global_generator(tf.random.Generator.from_seed(5))
    states = _random_states.capture()
    expected = tf.random.get_global_generator().normal((4,)).numpy()
    stateful_random_ops.global_generator = None  # as in a fresh process
    _random_states.restore({"tensorflow": states["tensorflow"]})
    np.testing.assert_array_equal(tf.random.get_global_generator().normal((4,)).numpy(), expected)
