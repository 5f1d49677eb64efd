"""Keras 2 / tf.keras spellings: each does what its author meant, with one
warning naming the Keras 3 spelling; what cannot be mapped fails early."""

import os
import warnings

import keras
import numpy as np
import pytest

import kcallbacks


@pytest.fixture
def data(digits):
    x, y = digits
    return x[:360], y[:360]


def make_model(seed=0, learning_rate=0.01, metrics=("accuracy",)):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )
    return model


def fit(model, data, callbacks, epochs, **kwargs):
    x, y = data
    kwargs.setdefault("validation_split", 1 / 6)
    return model.fit(x, y, batch_size=30, epochs=epochs, verbose=0, callbacks=callbacks,
                     **kwargs)


def keras2_messages(recorded):
    return [str(w.message) for w in recorded
            if issubclass(w.category, UserWarning) and "Keras 2" in str(w.message)]


def assert_weights_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


def newest(directory):
    paths = [os.path.join(directory, name) for name in os.listdir(directory)]
    return max(paths, key=os.path.getctime)


class WeightsAt(keras.callbacks.Callback):
    """Keeps the model's weights at each epoch end (`epochs`) and after each
    batch (`batches`, counted over the whole fit from 1)."""

    def __init__(self):
        super().__init__()
        self.epochs, self.batches, self._count = {}, {}, 0

    def on_train_batch_end(self, batch, logs=None):
        self._count += 1
        self.batches[self._count] = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch + 1] = self.model.get_weights()


class Scores(keras.callbacks.Callback):
    """Puts `values[epoch]` into the epoch logs as `score`."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]


# period


def test_tutorial_hdf5_weights_checkpoint_with_period_and_val_acc(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, weights = make_model(learning_rate=0.05), WeightsAt()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        checkpoint = kcallbacks.ModelCheckpoint(
            filepath="weights.{epoch:02d}-{val_loss:.2f}.hdf5", monitor="val_acc",
            save_best_only=True, save_weights_only=True, mode="max", period=1)
        history = fit(model, data, [checkpoint, weights], epochs=10).history
        written = sorted(os.listdir(tmp_path))
        fit(model, data, [checkpoint], epochs=1)  # a second fit adds no message
    messages = keras2_messages(recorded)
    assert messages == [
        "ModelCheckpoint: `period` is Keras 2's argument, gone in Keras 3 (whose "
        "save_freq=N counts batches); saving every epoch as asked",
        "ModelCheckpoint: save_weights_only=True with filepath "
        "'weights.{epoch:02d}-{val_loss:.2f}.hdf5' is Keras 2's spelling (Keras 3's "
        "ends in `.weights.h5`); writing Keras 2's HDF5 weights under that name, "
        "which model.load_weights reads",
        "ModelCheckpoint: monitor='val_acc' is Keras 2's name; this fit logs "
        "'val_accuracy' (Keras 3), monitoring that",
    ]
    assert checkpoint.period == 1 and checkpoint.monitor == "val_accuracy"

    # Saved at each epoch that raised val_accuracy, as Keras 2 did.
    accuracy, losses = history["val_accuracy"], history["val_loss"]
    improving = [e for e in range(10) if accuracy[e] > max(accuracy[:e], default=-1)]
    assert 1 < len(improving) < 10
    assert written == [f"weights.{e + 1:02d}-{losses[e]:.2f}.hdf5" for e in improving]
    assert checkpoint.best == max(accuracy)
    # model.load_weights reads each, as the weights of its epoch.
    for epoch, name in zip(improving, written):
        restored = make_model(seed=1)
        restored.load_weights(name)
        assert_weights_equal(restored.get_weights(), weights.epochs[epoch + 1])


def test_period_gates_when_the_best_is_checked(tmp_path, data):
    scores = [5.0, 1.0, 4.0, 3.0, 0.0, 2.0]
    with pytest.warns(UserWarning, match="saving every 2 epochs as asked") as recorded:
        checkpoint = kcallbacks.ModelCheckpoint(
            str(tmp_path / "{epoch}.weights.h5"), monitor="score", mode="min",
            save_best_only=True, save_weights_only=True, period=2)
    assert len(keras2_messages(recorded)) == 1
    fit(make_model(), data, [Scores(scores), checkpoint], epochs=6)
    # Checked at epochs 2, 4, 6 only: 1.0 saves; 3.0 and 2.0 do not beat it,
    # and the 0.0 of epoch 5 is never looked at.
    assert os.listdir(tmp_path) == ["2.weights.h5"]
    assert checkpoint.best == 1.0


def test_period_counter_is_in_the_state_so_a_resume_saves_on_time(tmp_path, data):
    def checkpoint():
        with pytest.warns(UserWarning, match="`period` is Keras 2's argument"):
            return kcallbacks.ModelCheckpoint(
                str(tmp_path / "{epoch}.weights.h5"), save_weights_only=True, period=2)

    model = make_model()
    first = checkpoint()
    fit(model, data, [first], epochs=3)
    state = first.get_state()
    assert state["epochs_since_last_save"] == 1

    resumed = checkpoint()
    resumed.set_state(state)
    fit(model, data, [resumed], epochs=6, initial_epoch=3)
    assert sorted(os.listdir(tmp_path)) == ["2.weights.h5", "4.weights.h5", "6.weights.h5"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(period=0), "ModelCheckpoint: period must be >= 1"),
    (dict(period="2"), "ModelCheckpoint: period must be >= 1"),
    (dict(period=2, save_freq=10),
     "ModelCheckpoint: period .* cannot be combined with save_freq=10"),
])
def test_bad_period_is_a_value_error_without_mapping_messages(tmp_path, kwargs, message):
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=message) as error:
            kcallbacks.ModelCheckpoint(str(tmp_path / "w.weights.h5"), save_weights_only=True,
                                       **kwargs)
    assert "\n" not in str(error.value)
    assert keras2_messages(recorded) == []


# filepaths without a Keras 3 suffix


def test_tutorial_batch_checkpoint_without_suffix_restores_newest(tmp_path, data):
    checkpoint_dir = str(tmp_path / "ckpt")
    os.makedirs(checkpoint_dir)
    with pytest.warns(UserWarning) as recorded:
        checkpoint = kcallbacks.ModelCheckpoint(
            filepath=checkpoint_dir + "/ckpt-loss={loss:.2f}", save_freq=100)
    assert keras2_messages(recorded) == [
        f"ModelCheckpoint: filepath '{checkpoint_dir}/ckpt-loss={{loss:.2f}}' lacks the "
        "`.keras` suffix Keras 3 needs for a model (Keras 2 wrote a SavedModel there); "
        f"saving the Keras 3 format to '{checkpoint_dir}/ckpt-loss={{loss:.2f}}.keras'"
    ]
    assert checkpoint.filepath == checkpoint_dir + "/ckpt-loss={loss:.2f}.keras"
    weights = WeightsAt()
    # 12 batches an epoch: saves after batches 100 and 200.
    fit(make_model(learning_rate=0.002), data, [checkpoint, weights], epochs=20,
        validation_split=0)

    names = sorted(os.listdir(checkpoint_dir))
    assert len(names) == 2
    assert all(name.startswith("ckpt-loss=") and name.endswith(".keras") for name in names)
    # The tutorial's make_or_restore_model: load the newest file.
    restored = keras.models.load_model(newest(checkpoint_dir))
    assert_weights_equal(restored.get_weights(), weights.batches[200])


def test_tutorial_model_checkpoint_without_suffix(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="saving the Keras 3 format to 'mymodel_{epoch}.keras'"):
        checkpoint = kcallbacks.ModelCheckpoint("mymodel_{epoch}")
    model = make_model()
    fit(model, data, [checkpoint], epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["mymodel_1.keras", "mymodel_2.keras"]
    assert_weights_equal(keras.models.load_model(newest(tmp_path)).get_weights(),
                         model.get_weights())


def test_weights_only_without_suffix_gets_weights_h5_and_best_pointer(tmp_path, data):
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        checkpoint = kcallbacks.ModelCheckpoint(
            str(tmp_path / "ckpt_{epoch}"), monitor="loss", save_weights_only=True,
            max_to_keep=2)
        model = make_model()
        fit(model, data, [checkpoint], epochs=3)
    messages = keras2_messages(recorded)
    assert len(messages) == 1 and "lacks the `.weights.h5` suffix" in messages[0]
    assert sorted(os.listdir(tmp_path)) == [
        "best.weights.h5", "checkpoints.json", "ckpt_2.weights.h5", "ckpt_3.weights.h5"]
    restored = make_model(seed=1)
    restored.load_weights(tmp_path / "best.weights.h5")
    assert_weights_equal(restored.get_weights(), model.get_weights())


def test_hdf5_weights_with_max_to_keep_point_best_hdf5_at_the_best(tmp_path, data):
    with pytest.warns(UserWarning, match="writing Keras 2's HDF5 weights"):
        checkpoint = kcallbacks.ModelCheckpoint(
            str(tmp_path / "w{epoch}.hdf5"), monitor="score", mode="min",
            save_weights_only=True, max_to_keep=1)

    weights = WeightsAt()
    fit(make_model(), data, [Scores([3.0, 1.0, 2.0]), checkpoint, weights], epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["best.hdf5", "checkpoints.json", "w2.hdf5"]
    for name in ("best.hdf5", "w2.hdf5"):
        restored = make_model(seed=1)
        restored.load_weights(tmp_path / name)
        assert_weights_equal(restored.get_weights(), weights.epochs[2])


def test_hdf5_whole_model_goes_to_the_legacy_format(tmp_path, data):
    with pytest.warns(UserWarning) as recorded:
        checkpoint = kcallbacks.ModelCheckpoint(str(tmp_path / "model_{epoch}.hdf5"))
    assert len(keras2_messages(recorded)) == 1
    assert "saving the model in the legacy HDF5 format" in keras2_messages(recorded)[0]
    model = make_model()
    fit(model, data, [checkpoint], epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["model_1.hdf5", "model_2.hdf5"]
    loaded = keras.models.load_model(tmp_path / "model_2.hdf5")
    assert_weights_equal(loaded.get_weights(), model.get_weights())


def test_keras3_spellings_give_no_message(tmp_path, data):
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        callbacks = [
            kcallbacks.ModelCheckpoint(str(tmp_path / "{epoch}.keras")),
            kcallbacks.ModelCheckpoint(str(tmp_path / "{epoch}.h5")),
            kcallbacks.ModelCheckpoint(str(tmp_path / "{epoch}.weights.h5"),
                                       save_weights_only=True, monitor="val_accuracy"),
        ]
        fit(make_model(), data, callbacks, epochs=1)
    assert keras2_messages(recorded) == []
    assert sorted(os.listdir(tmp_path)) == ["1.h5", "1.keras", "1.weights.h5"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(filepath="w.hdf5", save_weights_only=True, async_save=True),
     "async_save=True writes Keras 3 weights; end the filepath in `.weights.h5`"),
    (dict(filepath="m.keras", save_weights_only=True), "must end in `.weights.h5`"),
])
def test_unmappable_filepaths_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        kcallbacks.ModelCheckpoint(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs", [
    dict(filepath="m.keras", save_freq="batch"),
    dict(filepath="m.keras", save_freq=2.5),
    dict(filepath="m.keras", save_weights_only=True),
])
def test_values_keras_rejects_fail_with_keras_message(kwargs):
    with pytest.raises(Exception) as theirs:
        keras.callbacks.ModelCheckpoint(**kwargs)
    with pytest.raises(Exception) as ours:
        kcallbacks.ModelCheckpoint(**kwargs)
    assert type(ours.value) is type(theirs.value)
    assert str(theirs.value) in str(ours.value)
    assert str(ours.value).startswith("ModelCheckpoint: ")


def test_save_freq_batch_says_keras_text_then_ours():
    with pytest.raises(ValueError) as error:
        kcallbacks.ModelCheckpoint("m.keras", save_freq="batch")
    assert str(error.value) == (
        "ModelCheckpoint: Unrecognized save_freq: batch. Expected save_freq are 'epoch' "
        "or integer values; save_freq must be 'epoch' or a positive integer (a number of "
        "batches), got 'batch'")


# acc / val_acc


def stop_epoch(values, patience):
    """The epoch EarlyStopping (min_delta 0, mode max) stops at, or None."""
    best, wait = None, 0
    for epoch, value in enumerate(values):
        wait += 1
        if best is None or value > best:
            best, wait = value, 0
        elif wait >= patience:
            return epoch
    return None


def test_tutorial_early_stopping_on_val_acc(data):
    early_stopping = kcallbacks.EarlyStopping(monitor="val_acc", patience=3)
    with pytest.warns(UserWarning) as recorded:
        history = fit(make_model(learning_rate=0.05), data, [early_stopping], epochs=40).history
    assert keras2_messages(recorded) == [
        "EarlyStopping: monitor='val_acc' is Keras 2's name; this fit logs "
        "'val_accuracy' (Keras 3), monitoring that"]
    accuracy = history["val_accuracy"]
    expected = stop_epoch(accuracy, patience=3)
    assert expected is not None and len(accuracy) == expected + 1 < 40
    assert early_stopping.stopped_epoch == expected
    assert early_stopping.best == max(accuracy)
    assert early_stopping.monitor == "val_accuracy"


def test_val_acc_logged_as_such_is_left_alone(tmp_path, data):
    early_stopping = kcallbacks.EarlyStopping(monitor="val_acc", patience=2)
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / "{epoch}-{val_acc:.3f}.weights.h5"), monitor="acc",
        save_weights_only=True, save_best_only=True)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        history = fit(make_model(learning_rate=0.05, metrics=["acc"]), data,
                      [checkpoint, early_stopping], epochs=40).history
    assert keras2_messages(recorded) == []
    assert "val_acc" in history and "val_accuracy" not in history
    assert early_stopping.monitor == "val_acc" and checkpoint.monitor == "acc"
    assert len(history["val_acc"]) == stop_epoch(history["val_acc"], patience=2) + 1
    last = max(range(len(history["acc"])), key=lambda e: (history["acc"][e], -e))
    assert f"{last + 1}-{history['val_acc'][last]:.3f}.weights.h5" in os.listdir(tmp_path)


def test_tutorial_reduce_lr_on_val_acc_reduces(data):
    reduce_lr = kcallbacks.ReduceLROnPlateau(monitor="val_acc", mode="max", factor=0.5,
                                             patience=1, min_lr=1e-4)
    with pytest.warns(UserWarning) as recorded:
        history = fit(make_model(learning_rate=0.05), data, [reduce_lr], epochs=12).history
    assert keras2_messages(recorded) == [
        "ReduceLROnPlateau: monitor='val_acc' is Keras 2's name; this fit logs "
        "'val_accuracy' (Keras 3), monitoring that"]
    # The rates the epochs trained with, from Keras' rule on val_accuracy.
    best, wait, rate, expected = None, 0, 0.05, []
    for value in history["val_accuracy"]:
        expected.append(rate)
        if best is None or value - 1e-4 > best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= 1:
                rate, wait = max(rate * 0.5, 1e-4), 0
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)
    assert history["learning_rate"][-1] < 0.05
    assert reduce_lr.monitor == "val_accuracy"


def test_acc_fields_in_filepath_take_accuracy(tmp_path, data):
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        checkpoint = kcallbacks.ModelCheckpoint(
            str(tmp_path / "{epoch}-{acc:.3f}-{val_acc:.3f}.weights.h5"), monitor="acc",
            save_weights_only=True)
        history = fit(make_model(), data, [checkpoint], epochs=2).history
        fit(make_model(), data, [checkpoint], epochs=1)
    assert sorted(keras2_messages(recorded)) == [
        "ModelCheckpoint: filepath field {acc} is Keras 2's name; this fit logs "
        "'accuracy' (Keras 3), filling it with that",
        "ModelCheckpoint: filepath field {val_acc} is Keras 2's name; this fit logs "
        "'val_accuracy' (Keras 3), filling it with that",
        "ModelCheckpoint: monitor='acc' is Keras 2's name; this fit logs "
        "'accuracy' (Keras 3), monitoring that",
    ]
    assert f"2-{history['accuracy'][1]:.3f}-{history['val_accuracy'][1]:.3f}.weights.h5" in (
        os.listdir(tmp_path))


def test_val_acc_field_without_validation_is_still_an_error(tmp_path, data):
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / "{epoch}-{val_acc:.3f}.weights.h5"), save_weights_only=True,
        monitor="loss")
    with pytest.raises(ValueError, match=r"uses \{val_acc\}.*no validation data"):
        fit(make_model(), data, [checkpoint], epochs=1, validation_split=0)
