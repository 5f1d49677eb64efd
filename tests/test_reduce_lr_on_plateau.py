"""ReduceLROnPlateau on real fits: Keras' reductions, events and history,
schedules refused up front, and state for a resume."""

import json

import keras
import numpy as np
import pytest

import kcallbacks
from training import digits_model, fit_digits, scripted

COURSE = [5.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.9999, 3.0, 3.0]



@pytest.mark.all_backends
@pytest.mark.parametrize(
    "kwargs",
    [dict(patience=2, factor=0.5), dict(patience=1, factor=0.1, cooldown=2, min_lr=2e-4)],
)
def test_same_rates_as_keras_recorded_in_history_and_events(tmp_path, kwargs):
    kwargs = dict(monitor="score", mode="min", **kwargs)
    theirs = keras.callbacks.ReduceLROnPlateau(**kwargs)
    expected = fit_digits(digits_model(), len(COURSE), [scripted(COURSE), theirs]).history

    ours = kcallbacks.ReduceLROnPlateau(**kwargs)
    callbacks = [scripted(COURSE), ours, kcallbacks.HistoryLogger(tmp_path)]
    got = fit_digits(digits_model(), len(COURSE), callbacks).history

    np.testing.assert_array_equal(got["learning_rate"], expected["learning_rate"])
    assert (ours.wait, ours.best, ours.cooldown_counter) == (
        theirs.wait, theirs.best, theirs.cooldown_counter)
    rates = got["learning_rate"]
    assert len(set(rates)) >= 3  # the course does make it reduce, twice or more

    run = kcallbacks.load_run(tmp_path)
    np.testing.assert_array_equal(run.history["learning_rate"], rates)
    reductions = run.events[run.events["type"] == "lr_reduced"]
    changed = [e for e in range(1, len(rates)) if rates[e] != rates[e - 1]]
    # A reduction at the end of epoch e shows in the rate of epoch e + 1.
    assert (reductions["epoch"] + 1).tolist() == changed
    np.testing.assert_allclose(reductions["old"], [rates[e - 1] for e in changed])
    np.testing.assert_allclose(reductions["new"], [rates[e] for e in changed])


def test_min_lr_is_a_floor_and_no_event_once_there(tmp_path):
    reduce = kcallbacks.ReduceLROnPlateau("score", mode="min", factor=0.1, patience=0,
                                          min_lr=5e-4, run_dir=tmp_path)
    history = fit_digits(digits_model(learning_rate=0.01), 5, [scripted([1.0] * 5), reduce])
    # Epoch 0 sets the best; each later epoch is a plateau (patience 0).
    np.testing.assert_allclose(history.history["learning_rate"],
                               [0.01, 0.01, 0.001, 5e-4, 5e-4], rtol=1e-6)
    events = kcallbacks.load_run(tmp_path).events
    assert events["type"].tolist() == ["lr_reduced", "lr_reduced"]


def test_a_learning_rate_schedule_is_refused_before_training():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
    model = digits_model(learning_rate=schedule)
    seen = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    with pytest.raises(ValueError, match="ExponentialDecay schedule, which cannot be lowered"):
        fit_digits(model, 3, [kcallbacks.ReduceLROnPlateau("loss"), spy])
    assert seen == []


def test_a_restored_state_resumes_as_if_never_interrupted():
    kwargs = dict(monitor="score", mode="min", patience=2, factor=0.5, cooldown=1)
    whole = kcallbacks.ReduceLROnPlateau(**kwargs)
    expected = fit_digits(digits_model(), len(COURSE), [scripted(COURSE), whole]).history

    model = digits_model()
    first = kcallbacks.ReduceLROnPlateau(**kwargs)
    part = fit_digits(model, 6, [scripted(COURSE), first]).history
    state = json.loads(json.dumps(first.get_state()))
    assert set(state) == {"wait", "best", "cooldown_counter", "direction"}

    second = kcallbacks.ReduceLROnPlateau(**kwargs)
    second.set_state(state)
    rest = fit_digits(model, len(COURSE), [scripted(COURSE), second], initial_epoch=6).history

    np.testing.assert_array_equal(
        part["learning_rate"] + rest["learning_rate"], expected["learning_rate"])
    assert (second.wait, second.best, second.cooldown_counter) == (
        whole.wait, whole.best, whole.cooldown_counter)
