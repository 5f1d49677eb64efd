"""A keras-tuner search, as keras-tuner's "Getting started" writes it: a
`build_model(hp)` with a tuned width and learning rate, a `RandomSearch`
on `val_accuracy`, and `tuner.search(...)` with the callbacks, which
keras-tuner deep-copies for every trial. Each trial's training becomes its
own run, `RUN_DIR/runs/trial_<id>`. `overwrite=False`, so running the
script again after an interruption resumes the search: keras-tuner retries
the interrupted trial (which BackupAndRestore resumes) and skips finished
ones. Source: keras-team/keras-tuner docs/ipynb/getting_started.ipynb."""

import os

import common
import keras
import keras_tuner
from keras import layers

keras.utils.set_random_seed(0)
x, y = common.digits(n=640)
x_train, y_train, x_val, y_val = x[:512], y[:512], x[512:], y[512:]


def build_model(hp):
    model = keras.Sequential()
    model.add(keras.Input((64,)))
    model.add(
        layers.Dense(
            # Tune number of units.
            units=hp.Int("units", min_value=16, max_value=64, step=16),
            activation="relu",
        )
    )
    model.add(layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("lr", min_value=1e-3, max_value=1e-2, sampling="log")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


run_dir = common.run_dir()
tuner = keras_tuner.RandomSearch(
    hypermodel=build_model,
    objective="val_accuracy",
    max_trials=3,
    executions_per_trial=1,
    overwrite=False,
    directory=os.path.join(run_dir, "tuner"),
    project_name="digits",
    seed=1,
)
tuner.search(
    x_train, y_train, epochs=3, validation_data=(x_val, y_val), verbose=0,
    shuffle=common.shuffle(),
    callbacks=common.callbacks(os.path.join(run_dir, "runs"), monitor="val_accuracy"),
)
trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
common.finish(
    None,
    runs=[os.path.join("runs", f"trial_{t.trial_id}") for t in trials],
    scores={t.trial_id: t.score for t in trials},
    hyperparameters={t.trial_id: t.hyperparameters.values for t in trials},
)
