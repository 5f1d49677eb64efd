"""The wiring every kcallbacks callback shares (RunCallback), and what
BackupAndRestore does when its hooks are not called by Keras' CallbackList
(a hand-written training loop): it says what it loses, and
`stateful_callbacks` names the callbacks whose state to keep."""

import inspect
import warnings

import keras
import numpy as np
import pytest

import kcallbacks
from kcallbacks import snapshots
from kcallbacks.monitor import MonitorCallback
from kcallbacks.run_callback import RunCallback
from training import digits_data, digits_model, fit_digits, scripted

PUBLIC_CALLBACKS = [
    "HistoryLogger", "CSVLogger", "BatchLossTracker", "ModelCheckpoint",
    "EarlyStopping", "ReduceLROnPlateau", "BackupAndRestore", "LiveCharts",
]
LOSS = "backs up no other callback's state"


def test_every_public_callback_is_a_run_callback():
    exported = {
        name for name in kcallbacks.__all__
        if inspect.isclass(getattr(kcallbacks, name))
        and issubclass(getattr(kcallbacks, name), keras.callbacks.Callback)
    }
    assert exported == set(PUBLIC_CALLBACKS)
    for name in PUBLIC_CALLBACKS:
        assert issubclass(getattr(kcallbacks, name), RunCallback), name


@pytest.mark.parametrize("name", PUBLIC_CALLBACKS)
def test_no_callback_overrides_on_train_begin(name):
    # They implement begin_fit: RunCallback's on_train_begin (the wiring)
    # is the one that runs, so it cannot be skipped.
    cls = getattr(kcallbacks, name)
    mro = cls.__mro__
    below_base = mro[: mro.index(RunCallback)]
    assert [c.__name__ for c in below_base if "on_train_begin" in vars(c)] == []
    assert cls.on_train_begin is RunCallback.on_train_begin
    assert "begin_fit" in vars(cls) or "begin_fit" in vars(MonitorCallback)
    assert "on_train_begin" not in vars(MonitorCallback)


def hand_loop(model, callbacks, epochs, scores, batch_size=128, n=256):
    """A training loop that calls the callbacks' hooks itself, in list order,
    as custom loops do: no Keras CallbackList is on the stack."""
    x, y = digits_data(n)
    steps = n // batch_size
    model.stop_training = False
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
    for callback in callbacks:
        callback.on_train_begin()
    start = getattr(model, "_initial_epoch", None) or 0
    for epoch in range(start, epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        for batch in range(steps):
            for callback in callbacks:
                callback.on_train_batch_begin(batch)
            part = slice(batch * batch_size, (batch + 1) * batch_size)
            logs = model.train_on_batch(x[part], y[part], return_dict=True)
            for callback in callbacks:
                callback.on_train_batch_end(batch, logs)
        logs = {key: float(value) for key, value in logs.items()}
        logs["score"] = scores[epoch]
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end()


def _stopper():
    return kcallbacks.EarlyStopping("score", mode="min", patience=5, restore_best_weights=True,
                                    run_dir=None)


def _backup_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("BackupAndRestore:")]


def test_a_hand_loop_warns_once_that_no_callback_state_is_kept(tmp_path):
    backup = kcallbacks.BackupAndRestore(tmp_path / "backup", async_save=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hand_loop(digits_model(), [_stopper(), backup], 2, [3.0, 2.0])
        hand_loop(digits_model(), [_stopper(), backup], 4, [3.0, 2.0, 2.5, 2.5])
    said = _backup_warnings(caught)
    assert len(said) == 1, said
    assert LOSS in said[0] and "stateful_callbacks" in said[0]
    assert "not called by Keras' CallbackList" in said[0]

    # And indeed: a fresh EarlyStopping gets nothing back from that backup.
    state, _ = snapshots.read_snapshot(snapshots.list_snapshots(tmp_path / "backup")[0][1])
    assert state["callbacks"] == {}
    fresh = _stopper()
    restorer = kcallbacks.BackupAndRestore(tmp_path / "backup", stateful_callbacks=[fresh])
    hand_loop(digits_model(), [restorer, fresh], 4, [9.0] * 4)  # finished: trains nothing
    assert (fresh.best, fresh.wait, fresh.best_weights) == (None, 0, None)


@pytest.mark.parametrize("restorer_first", [True, False])
def test_named_stateful_callbacks_round_trip_through_a_snapshot(tmp_path, restorer_first):
    stopper = _stopper()
    backup = kcallbacks.BackupAndRestore(tmp_path / "backup", stateful_callbacks=[stopper],
                                         run_dir=tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hand_loop(digits_model(), [stopper, backup], 3, [3.0, 2.0, 2.5])
    assert _backup_warnings(caught) == []
    saved = stopper.get_state()
    assert (saved["best"], saved["best_epoch"], saved["wait"]) == (2.0, 1, 1)

    fresh = _stopper()
    restorer = kcallbacks.BackupAndRestore(tmp_path / "backup", stateful_callbacks=[fresh],
                                           run_dir=tmp_path / "run")
    model = digits_model(seed=1)
    model.build((None, 64))
    fresh.set_model(model)
    restorer.set_model(model)
    restorer.set_params({"epochs": 3, "steps": 2, "verbose": 0})
    order = [restorer, fresh] if restorer_first else [fresh, restorer]
    for callback in order:  # the restore, and the other's own on_train_begin
        callback.on_train_begin()
    got = fresh.get_state()
    for key in ("best", "best_epoch", "wait", "stopped_epoch"):
        assert got[key] == saved[key], key
    assert len(got["best_weights"]) == len(saved["best_weights"])
    for a, b in zip(got["best_weights"], saved["best_weights"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.get_weights(), backup.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_named_callbacks_without_a_run_dir_warn_only_about_events(tmp_path):
    stopper = _stopper()
    backup = kcallbacks.BackupAndRestore(tmp_path / "backup", stateful_callbacks=[stopper])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hand_loop(digits_model(), [stopper, backup], 2, [3.0, 2.0])
    said = _backup_warnings(caught)
    assert len(said) == 1 and LOSS not in said[0]
    assert "events are not recorded" in said[0]


def test_in_a_fit_no_warning_and_the_named_callbacks_only(tmp_path):
    stopper = kcallbacks.EarlyStopping("score", mode="min", patience=5)
    reduce = kcallbacks.ReduceLROnPlateau("score", mode="min", patience=5)
    backup = kcallbacks.BackupAndRestore(tmp_path / "named", stateful_callbacks=[stopper])
    every = kcallbacks.BackupAndRestore(tmp_path / "every")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_digits(digits_model(), 2, [scripted([3.0, 2.0]), stopper, reduce, backup, every])
    assert _backup_warnings(caught) == []

    def keys(directory):
        state, _ = snapshots.read_snapshot(snapshots.list_snapshots(directory)[0][1])
        return sorted(state["callbacks"])

    assert keys(tmp_path / "named") == ["EarlyStopping#1"]
    assert keys(tmp_path / "every") == ["EarlyStopping#1", "ReduceLROnPlateau#1"]


@pytest.mark.parametrize("value, message", [
    (kcallbacks.EarlyStopping(), "must be a list of callbacks or None"),
    ("EarlyStopping", "must be a list of callbacks or None"),
    ([keras.callbacks.History()], r"stateful_callbacks\[0\] \(History\) has no get_state"),
])
def test_bad_stateful_callbacks(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        kcallbacks.BackupAndRestore(tmp_path, stateful_callbacks=value)


def test_stateful_callbacks_cannot_repeat_one(tmp_path):
    stopper = kcallbacks.EarlyStopping()
    with pytest.raises(ValueError, match="twice"):
        kcallbacks.BackupAndRestore(tmp_path, stateful_callbacks=[stopper, stopper])
