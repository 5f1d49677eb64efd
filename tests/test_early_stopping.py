"""EarlyStopping on real fits: Keras' semantics, the baseline done right,
restore_best_weights, the early_stop event, and state for a resume."""

import json
import math

import keras
import numpy as np
import pytest

import kcallbacks
from training import RecordWeights, digits_model, fit_digits, scripted

# A monitored course with a plateau, a late improvement and noise.
COURSE = [5.0, 4.0, 4.5, 4.2, 3.9, 4.0, 3.95, 4.1, 3.0, 3.5, 3.6, 3.7]



@pytest.mark.all_backends
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(patience=2),
        dict(patience=1, min_delta=0.2),
        dict(patience=1, start_from_epoch=4),
        dict(patience=3, restore_best_weights=True),
    ],
)
def test_same_decisions_as_keras(kwargs):
    ours = kcallbacks.EarlyStopping("score", mode="min", **kwargs)
    theirs = keras.callbacks.EarlyStopping("score", mode="min", **kwargs)
    model = digits_model()
    history = fit_digits(model, len(COURSE), [scripted(COURSE), ours, theirs])

    assert ours.stopped_epoch == theirs.stopped_epoch > 0
    assert len(history.history["loss"]) == ours.stopped_epoch + 1
    assert (ours.best, ours.best_epoch, ours.wait) == (theirs.best, theirs.best_epoch, theirs.wait)
    if kwargs.get("restore_best_weights"):
        for a, b, now in zip(ours.best_weights, theirs.best_weights, model.get_weights()):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, now)


def test_baseline_stops_a_run_that_improves_but_never_beats_it(tmp_path):
    improving = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0]
    ours = kcallbacks.EarlyStopping("score", mode="min", patience=3, baseline=1.0)
    theirs = keras.callbacks.EarlyStopping("score", mode="min", patience=3, baseline=1.0)
    history = fit_digits(digits_model(), 6, [scripted(improving), kcallbacks.HistoryLogger(tmp_path),
                                       ours, theirs])

    assert len(history.history["loss"]) == 3
    assert (ours.stopped_epoch, ours.best, ours.best_epoch) == (2, 8.0, 2)
    assert theirs.stopped_epoch == 0  # Keras 3 would have trained on

    run = kcallbacks.load_run(tmp_path)
    (stop,) = run.events[run.events["type"] == "early_stop"].to_dict("records")
    assert stop["epoch"] == 2 and stop["best_epoch"] == 2 and stop["best_value"] == 8.0
    assert stop["monitor"] == "score" and stop["restored_best_weights"] is False
    assert run.manifest["status"] == "stopped_early"


def test_beating_the_baseline_restarts_patience():
    course = [10.0, 9.0, 0.5, 0.6, 0.7, 0.8, 0.9]
    stop = kcallbacks.EarlyStopping("score", mode="min", patience=3, baseline=1.0)
    history = fit_digits(digits_model(), 7, [scripted(course), stop])
    assert len(history.history["loss"]) == 6
    assert (stop.stopped_epoch, stop.best, stop.best_epoch) == (5, 0.5, 2)


@pytest.mark.all_backends
@pytest.mark.parametrize("patience, epochs_run", [(2, 4), (99, 5)], ids=["stopped", "last_epoch"])
def test_restore_best_weights_on_a_stop_and_at_the_last_epoch(tmp_path, patience, epochs_run):
    course = [3.0, 1.0, 2.0, 2.0, 1.5]
    record = RecordWeights()
    stop = kcallbacks.EarlyStopping("score", mode="min", patience=patience,
                                    restore_best_weights=True, run_dir=tmp_path / "run")
    model = digits_model()
    history = fit_digits(model, 5, [scripted(course), record, stop])

    assert len(history.history["loss"]) == epochs_run
    assert stop.best_epoch == 1
    for restored, best in zip(model.get_weights(), record.by_epoch[1]):
        np.testing.assert_array_equal(restored, best)
    assert not np.array_equal(record.by_epoch[1][0], record.by_epoch[epochs_run - 1][0])
    events = kcallbacks.load_run(tmp_path / "run").events
    stops = events[events["type"] == "early_stop"]
    if patience == 2:
        assert stops["restored_best_weights"].tolist() == [True]
        assert stops["best_epoch"].tolist() == [1] and stops["epoch"].tolist() == [3]
    else:
        assert len(stops) == 0


def test_weights_of_the_first_monitored_epoch_when_nothing_improves():
    record = RecordWeights()
    stop = kcallbacks.EarlyStopping("score", mode="min", patience=2, restore_best_weights=True,
                                    start_from_epoch=1)
    model = digits_model()
    fit_digits(model, 4, [scripted([1.0, math.nan, math.nan, math.nan]), record, stop])
    assert stop.stopped_epoch == 2 and stop.best is None and stop.best_epoch == 1
    for restored, first in zip(model.get_weights(), record.by_epoch[1]):
        np.testing.assert_array_equal(restored, first)


class RestoreAtTrainBegin(keras.callbacks.Callback):
    """Calls set_state from on_train_begin, as a restore callback would."""

    def __init__(self, target, state):
        super().__init__()
        self.target = target
        self.state = state

    def on_train_begin(self, logs=None):
        self.target.set_state(self.state)


def _json_round_trip(state):
    weights = state.pop("best_weights")
    state = json.loads(json.dumps(state, allow_nan=True))
    state["best_weights"] = None if weights is None else [np.array(w) for w in weights]
    return state


@pytest.mark.parametrize("order", ["set_state_first", "before_on_train_begin",
                                   "after_on_train_begin"])
def test_a_restored_state_resumes_as_if_never_interrupted(order):
    course = [5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 3.7, 3.8]
    kwargs = dict(monitor="score", mode="min", patience=3, restore_best_weights=True)
    whole = kcallbacks.EarlyStopping(**kwargs)
    model = digits_model()
    fit_digits(model, 8, [scripted(course), whole])
    expected_weights = model.get_weights()

    model = digits_model()
    first = kcallbacks.EarlyStopping(**kwargs)
    fit_digits(model, 5, [scripted(course), first])
    assert first.stopped_epoch == 0 and first.wait == 1
    state = _json_round_trip(first.get_state())

    second = kcallbacks.EarlyStopping(**kwargs)
    callbacks = [scripted(course)]
    if order == "set_state_first":
        second.set_state(state)
        callbacks.append(second)
    elif order == "before_on_train_begin":
        callbacks += [RestoreAtTrainBegin(second, state), second]
    else:
        callbacks += [second, RestoreAtTrainBegin(second, state)]
    history = fit_digits(model, 8, callbacks, initial_epoch=5)

    assert len(history.history["loss"]) == whole.stopped_epoch + 1 - 5
    assert (second.stopped_epoch, second.best, second.best_epoch, second.wait) == (
        whole.stopped_epoch, whole.best, whole.best_epoch, whole.wait)
    for a, b in zip(model.get_weights(), expected_weights):
        np.testing.assert_array_equal(a, b)

    # The restored state served one fit; the next fit starts afresh, as in Keras.
    fit_digits(model, 2, [scripted([9.0, 8.0]), second])
    assert (second.best, second.best_epoch, second.stopped_epoch) == (8.0, 1, 0)
