"""A run's hyperparameters in its manifest: given, recorded without being
asked, and bad values refused by name before anything is written."""

import keras
import numpy as np
import pytest

import kcallbacks
from training import digits_data


def small_model(units=16, optimizer=None):
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(learning_rate=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.mark.all_backends
def test_given_and_automatic_hyperparameters_are_in_the_manifest(tmp_path):
    x, y = digits_data(128)
    model = small_model(units=24)
    given = {"units": 24, "dropout": np.float32(0.25), "activation": "relu",
             "augment": False, "note": None, "batch_size": 999}
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_split=0.25,
              callbacks=kcallbacks.standard_callbacks(tmp_path / "run", hparams=given))
    manifest = kcallbacks.load_run(tmp_path / "run").manifest
    assert manifest["hparams"] == {
        "optimizer": "SGD",
        "learning_rate": pytest.approx(0.05),
        # What the program gave wins over what the fit shows.
        "batch_size": 999,
        "epochs": 2,
        "params": 64 * 24 + 24 + 24 * 10 + 10,
        "units": 24,
        "dropout": 0.25,
        "activation": "relu",
        "augment": False,
        "note": None,
    }
    assert type(manifest["hparams"]["dropout"]) is float
    assert manifest["hparams_automatic"] == ["optimizer", "learning_rate", "epochs", "params"]


def test_the_batch_size_of_arrays_is_keras_default_and_a_schedule_gives_its_initial_rate(tmp_path):
    x, y = digits_data(96)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    model = small_model(optimizer=keras.optimizers.Adam(learning_rate=schedule))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[kcallbacks.HistoryLogger(tmp_path / "run")])
    hparams = kcallbacks.load_run(tmp_path / "run").manifest["hparams"]
    assert hparams["batch_size"] == 32  # fit's default
    assert hparams["learning_rate"] == pytest.approx(0.1)
    assert hparams["optimizer"] == "Adam"


def test_a_dataset_of_unknown_batch_size_leaves_it_out(tmp_path):
    x, y = digits_data(96)

    def batches():
        for start in range(0, 96, 24):
            yield x[start:start + 24], y[start:start + 24]

    model = small_model()
    model.fit(batches(), epochs=1, steps_per_epoch=4, verbose=0, shuffle=False,
              callbacks=[kcallbacks.HistoryLogger(tmp_path / "run")])
    hparams = kcallbacks.load_run(tmp_path / "run").manifest["hparams"]
    assert "batch_size" not in hparams
    assert hparams["epochs"] == 1


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"layers": {"units": 3}}, "hparams['layers'] is a dict; a hyperparameter is a number, "
                                   "a bool, a string or None (flatten it: 'name.key' names)"),
        ({"widths": [8, 16]}, "hparams['widths'] is a list"),
        ({"kernel": np.zeros((2, 3))}, "hparams['kernel'] is an array of shape (2, 3)"),
        ({3: "x"}, "hparams key 3 is not a string (int); names are strings"),
        ([("units", 3)], "hparams must be a dict of names to scalars or strings, got list"),
    ],
)
def test_bad_values_are_a_one_line_error_naming_the_key(tmp_path, hparams, message):
    with pytest.raises(ValueError) as raised:
        kcallbacks.standard_callbacks(tmp_path / "run", hparams=hparams)
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert text.startswith("HistoryLogger: ")
    # Refused before anything was written.
    assert not (tmp_path / "run").exists()
