"""The monitor base shared by ModelCheckpoint, EarlyStopping and
ReduceLROnPlateau: direction as Keras infers it, the improvement test, NaN,
missing keys and bad arguments, on real fits."""

import math
import warnings

import keras
import pytest

import kcallbacks
from training import digits_model, fit_digits, scripted



def test_auto_mode_infers_the_direction_as_keras_does():
    model = digits_model(
        metrics=[
            "accuracy",
            keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3"),
            keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="xent"),
        ]
    )
    expected = {"loss": False, "val_loss": False, "accuracy": True, "val_top3": True,
                "xent": False, "val_xent": False}
    pairs = {
        monitor: (kcallbacks.EarlyStopping(monitor, patience=99),
                  keras.callbacks.EarlyStopping(monitor, patience=99))
        for monitor in expected
    }
    fit_digits(model, 3, [cb for pair in pairs.values() for cb in pair], validation_split=0.25)

    for monitor, (ours, theirs) in pairs.items():
        assert ours._maximizing == (theirs.monitor_op is keras.ops.greater) == expected[monitor]
        assert ours.best == pytest.approx(float(theirs.best), rel=1e-6), monitor
        assert ours.best_epoch == theirs.best_epoch


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: kcallbacks.EarlyStopping("score"),
        lambda tmp: kcallbacks.ReduceLROnPlateau("score"),
        lambda tmp: kcallbacks.ModelCheckpoint(str(tmp / "w.weights.h5"), "score",
                                               save_weights_only=True),
    ],
    ids=["EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"],
)
def test_auto_mode_refuses_a_metric_of_unknown_direction(tmp_path, make):
    with pytest.raises(ValueError, match="monitor=score.*mode='max'"):
        fit_digits(digits_model(), 2, [scripted([1.0, 2.0]), make(tmp_path)])


def test_improvement_test_min_delta_and_nan():
    low = kcallbacks.EarlyStopping("x", mode="min", min_delta=0.1)
    assert low._is_improvement(0.8, 1.0)
    assert not low._is_improvement(0.95, 1.0)  # by less than min_delta
    assert not low._is_improvement(1.2, 1.0)
    assert low._is_improvement(5.0, None)  # anything beats no best yet
    assert low._is_improvement(5.0, math.nan)
    assert not low._is_improvement(math.nan, None)
    assert not low._is_improvement(math.nan, 1.0)
    assert not low._is_improvement(None, 1.0)

    high = kcallbacks.ReduceLROnPlateau("x", mode="max", min_delta=0.1)
    assert high._is_improvement(1.2, 1.0)
    assert not high._is_improvement(1.05, 1.0)
    assert not high._is_improvement(0.5, 1.0)
    assert not high._is_improvement(math.nan, -math.inf)
    assert high.min_delta == 0.1  # Keras would have flipped its sign in "min" mode


def test_nan_never_improves_unlike_keras(tmp_path):
    values = [math.nan, 3.0, 2.0, 2.5]
    ours = kcallbacks.EarlyStopping("score", mode="min", patience=9)
    theirs = keras.callbacks.EarlyStopping("score", mode="min", patience=9)
    reduce = kcallbacks.ReduceLROnPlateau("score", mode="min", patience=9)
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / "{epoch}.weights.h5"), "score", mode="min",
        save_best_only=True, save_weights_only=True,
    )
    fit_digits(digits_model(), 4, [scripted(values), ours, theirs, reduce, checkpoint])

    assert (ours.best, ours.best_epoch, ours.wait) == (2.0, 2, 1)
    assert reduce.best == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.weights.h5", "3.weights.h5"]
    # Keras takes the NaN as its best and then nothing ever beats it.
    assert math.isnan(theirs.best) and theirs.best_epoch == 0


def test_a_missing_monitored_key_warns_once_per_callback(tmp_path):
    callbacks = [
        kcallbacks.EarlyStopping("val_nope", mode="min"),
        kcallbacks.ReduceLROnPlateau("val_nope", mode="min"),
        kcallbacks.ModelCheckpoint(str(tmp_path / "{epoch}.weights.h5"), "val_nope", mode="min",
                                   save_best_only=True, save_weights_only=True),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit_digits(digits_model(), 3, callbacks)

    assert len(history.history["loss"]) == 3  # no crash, no stop
    about = [str(w.message) for w in caught if "val_nope" in str(w.message)]
    assert len(about) == 3
    for name, message in zip(["EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"], about):
        assert message.startswith(f"{name} is conditioned on metric `val_nope`")
        assert "Available metrics are: accuracy,loss" in message
    # As Keras: without the value, save_best_only saves every time.
    assert len(list(tmp_path.iterdir())) == 3


def _checkpoint(tmp_path, **kwargs):
    kwargs.setdefault("filepath", str(tmp_path / "w.weights.h5"))
    kwargs.setdefault("save_weights_only", True)
    return kcallbacks.ModelCheckpoint(**kwargs)


BAD_ARGUMENTS = [
    (kcallbacks.EarlyStopping, dict(mode="best"), "mode must be one of auto, min, max, got 'best'"),
    (kcallbacks.ReduceLROnPlateau, dict(mode="up"), "mode must be one of"),
    (_checkpoint, dict(mode="MIN"), "mode must be one of"),
    (kcallbacks.EarlyStopping, dict(patience=-1), r"patience must be >= 0 \(an integer\), got -1"),
    (kcallbacks.EarlyStopping, dict(start_from_epoch=-2), "start_from_epoch must be >= 0"),
    (kcallbacks.EarlyStopping, dict(baseline="high"), "baseline must be a number or None"),
    (kcallbacks.EarlyStopping, dict(min_delta="a"), "min_delta must be a number"),
    (kcallbacks.ReduceLROnPlateau, dict(factor=1.0), r"factor must be in \[0, 1\)"),
    (kcallbacks.ReduceLROnPlateau, dict(factor=2), r"factor must be in \[0, 1\)"),
    (kcallbacks.ReduceLROnPlateau, dict(factor=-0.5), r"factor must be in \[0, 1\)"),
    (kcallbacks.ReduceLROnPlateau, dict(patience=-1), "patience must be >= 0"),
    (kcallbacks.ReduceLROnPlateau, dict(cooldown=-1), "cooldown must be >= 0"),
    (kcallbacks.ReduceLROnPlateau, dict(min_lr=-1e-3), "min_lr must be >= 0"),
    (_checkpoint, dict(save_freq=0), "save_freq must be 'epoch' or a positive integer"),
    (_checkpoint, dict(save_freq="batch"), "save_freq must be 'epoch' or a positive integer"),
    (_checkpoint, dict(save_freq=True), "save_freq must be 'epoch' or a positive integer"),
    (_checkpoint, dict(save_freq=2.5), "save_freq must be 'epoch' or a positive integer"),
    (_checkpoint, dict(max_to_keep=0), r"max_to_keep must be >= 1 \(an integer\)"),
    (_checkpoint, dict(filepath="m.keras", async_save=True, save_weights_only=False),
     "async_save=True needs save_weights_only=True"),
    (_checkpoint, dict(filepath="m.keras"), "must end in `.weights.h5`"),
    (_checkpoint, dict(filepath="ckpt/{epoch}/w.weights.h5", max_to_keep=2),
     "directory cannot have fields"),
    (_checkpoint, dict(filepath="ckpt/best.weights.h5", max_to_keep=2),
     "best.weights.h5 names the best checkpoint"),
]


@pytest.mark.parametrize("make, kwargs, message", BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_value_errors(tmp_path, make, kwargs, message):
    if make is _checkpoint:
        make = lambda **kw: _checkpoint(tmp_path, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=message) as error:
        make(**kwargs)
    assert "\n" not in str(error.value)
    assert str(error.value).split(":")[0] in (
        "EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"
    )
