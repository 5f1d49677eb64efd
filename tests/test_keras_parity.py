"""Drop-in exactness: where Keras' own callback rejects an argument, ours
fails the same way (an instance of Keras' exception type, with Keras' text
in the message), checked against the installed Keras itself; and the
places where ours fails on purpose while Keras does not still do."""

import re
import warnings

import keras
import pytest

import kcallbacks
from kcallbacks.reduce_lr_on_plateau import LearningRateScheduleError
from training import digits_model, fit_digits, scripted


def _raised(make):
    """The exception `make()` raises (the test fails if it raises none)."""
    with pytest.raises(Exception) as caught:
        make()
    return caught.value


def _assert_fails_as_keras(theirs, ours):
    assert isinstance(ours, type(theirs)), (type(ours), type(theirs))
    assert str(theirs) in str(ours)
    assert "\n" not in str(ours)


def _both(name, *args, **kwargs):
    """(Keras' built-in, ours): `name` made with the same arguments; the
    text "DIR" in a string argument stands for a fresh directory."""

    def make(module):
        def build(directory):
            def fill(value):
                return value.replace("DIR", directory) if isinstance(value, str) else value

            return getattr(module, name)(*map(fill, args),
                                         **{k: fill(v) for k, v in kwargs.items()})
        return build

    return make(keras.callbacks), make(kcallbacks)


# (what, class, args, kwargs): each Keras call must raise.
REJECTED = [
    ("backup_dir=''", "BackupAndRestore", (), dict(backup_dir="")),
    ("backup_dir=None", "BackupAndRestore", (), dict(backup_dir=None)),
    ("save_freq='batch'", "BackupAndRestore", ("DIR",), dict(save_freq="batch")),
    ("save_freq=2.5", "BackupAndRestore", ("DIR",), dict(save_freq=2.5)),
    ("factor=1.0", "ReduceLROnPlateau", (), dict(factor=1.0)),
    ("factor=2", "ReduceLROnPlateau", (), dict(factor=2)),
    ("factor=1.5", "ReduceLROnPlateau", (), dict(factor=1.5)),
]


@pytest.mark.parametrize("what, name, args, kwargs", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_arguments_fail_as_in_keras(tmp_path, what, name, args, kwargs):
    theirs, ours = _both(name, *args, **kwargs)
    directory = str(tmp_path / "backup")
    _assert_fails_as_keras(_raised(lambda: theirs(directory)), _raised(lambda: ours(directory)))


def test_negative_patience_fails_as_in_keras():
    # Keras since keras-team/keras#23559 rejects it (its test:
    # assertRaisesRegex(ValueError, r"patience.*must be >= 0")); 3.15 accepts it.
    ours = _raised(lambda: kcallbacks.EarlyStopping(patience=-1))
    assert isinstance(ours, ValueError)
    assert re.search(r"patience.*must be >= 0", str(ours))
    try:
        keras.callbacks.EarlyStopping(patience=-1)
    except Exception as theirs:  # a Keras with #23559
        assert isinstance(ours, type(theirs))
        assert re.search(r"patience.*must be >= 0", str(theirs))


def _schedule_model():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
    return digits_model(learning_rate=schedule)


def test_a_learning_rate_schedule_fails_as_in_keras_but_before_training():
    course = [1.0] * 4  # a plateau: patience 0 reduces at the end of epoch 1
    kwargs = dict(monitor="score", mode="min", patience=0)

    trained = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: trained.append(b))
    keras_reduce = keras.callbacks.ReduceLROnPlateau(**kwargs)
    theirs = _raised(
        lambda: fit_digits(_schedule_model(), 4, [scripted(course), keras_reduce, spy]))
    assert trained  # Keras fails only at its first reduction

    trained.clear()
    ours = _raised(lambda: fit_digits(
        _schedule_model(), 4, [scripted(course), kcallbacks.ReduceLROnPlateau(**kwargs), spy]))
    assert trained == []  # ours fails at train begin
    assert type(ours) is LearningRateScheduleError
    assert isinstance(ours, TypeError) and isinstance(ours, ValueError)
    _assert_fails_as_keras(theirs, ours)
    assert "ExponentialDecay schedule" in str(ours)


@pytest.mark.parametrize("keras_class, ours_class",
                         [(keras.callbacks.EarlyStopping, kcallbacks.EarlyStopping),
                          (keras.callbacks.ReduceLROnPlateau, kcallbacks.ReduceLROnPlateau)])
def test_a_monitor_without_direction_fails_as_in_keras(keras_class, ours_class):
    course = [1.0, 0.5, 0.25]
    def failure(make):
        return _raised(lambda: fit_digits(digits_model(), 3, [scripted(course), make("score")]))

    theirs, ours = failure(keras_class), failure(ours_class)
    _assert_fails_as_keras(theirs, ours)


# Deliberate differences, which Keras accepts: (what, class, args, kwargs).
WEIGHTS = "DIR/w.weights.h5"
STRICTER = [
    ("EarlyStopping mode='best'", "EarlyStopping", (), dict(mode="best")),
    ("ReduceLROnPlateau mode='up'", "ReduceLROnPlateau", (), dict(mode="up")),
    ("ModelCheckpoint mode='MIN'", "ModelCheckpoint", (WEIGHTS,),
     dict(save_weights_only=True, mode="MIN")),
    ("EarlyStopping start_from_epoch=-1", "EarlyStopping", (), dict(start_from_epoch=-1)),
    ("ReduceLROnPlateau factor=-0.5", "ReduceLROnPlateau", (), dict(factor=-0.5)),
    ("ReduceLROnPlateau patience=-1", "ReduceLROnPlateau", (), dict(patience=-1)),
    ("ReduceLROnPlateau cooldown=-1", "ReduceLROnPlateau", (), dict(cooldown=-1)),
    ("ReduceLROnPlateau min_lr=-1", "ReduceLROnPlateau", (), dict(min_lr=-1.0)),
    ("BackupAndRestore save_freq=0", "BackupAndRestore", ("DIR",), dict(save_freq=0)),
    ("BackupAndRestore save_freq=-3", "BackupAndRestore", ("DIR",), dict(save_freq=-3)),
    ("BackupAndRestore save_freq=True", "BackupAndRestore", ("DIR",), dict(save_freq=True)),
]


@pytest.mark.parametrize("what, name, args, kwargs", STRICTER, ids=[r[0] for r in STRICTER])
def test_deliberately_stricter_than_keras(tmp_path, what, name, args, kwargs):
    theirs, ours = _both(name, *args, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs(str(tmp_path))  # Keras accepts (at most warning)
    if "mode=" in what:
        assert any("is unknown, fallback to auto mode" in str(w.message) for w in caught)
    with pytest.raises(ValueError) as error:
        ours(str(tmp_path))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(what.split()[0] + ":")


def test_stray_keyword_arguments_are_refused():
    keras.callbacks.ReduceLROnPlateau(epsilon=1e-3)  # Keras swallows **kwargs
    with pytest.raises(TypeError, match="epsilon"):
        kcallbacks.ReduceLROnPlateau(epsilon=1e-3)


def test_save_freq_false_is_accepted_by_both(tmp_path):
    # Keras reads False as the integer 0 (a backup after every batch); ours
    # backs up the final state only.
    keras.callbacks.BackupAndRestore(str(tmp_path / "k"), save_freq=False)
    assert kcallbacks.BackupAndRestore(str(tmp_path / "o"), save_freq=False).save_freq is False
