"""An Optuna study whose objective trains a Keras model, as Optuna's Keras
example writes it (optuna-examples/keras/keras_simple.py): the objective
suggests a width and a learning rate, builds and fits a model, and
returns its validation accuracy. The objective gives each trial's fit its
own run directory (`trial_<number>`), with the trial's `params` as the
run's hyperparameters."""

import os

import common
import keras
import optuna

keras.utils.set_random_seed(0)
x, y = common.digits(n=640)
x_train, y_train, x_val, y_val = x[:512], y[:512], x[512:], y[512:]
run_dir = common.run_dir()


def objective(trial):
    keras.backend.clear_session()
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(trial.suggest_int("units", 16, 64, step=16), activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    learning_rate = trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train, y_train, validation_data=(x_val, y_val), batch_size=64, epochs=3,
        verbose=0, shuffle=common.shuffle(),
        callbacks=common.callbacks(
            os.path.join(run_dir, f"trial_{trial.number}"), monitor="val_accuracy",
            hparams=trial.params,
        ),
    )
    # Evaluate the model accuracy on the validation set.
    return model.evaluate(x_val, y_val, verbose=0)[1]


optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
study.optimize(objective, n_trials=3)
common.finish(None, runs=[f"trial_{t.number}" for t in study.trials],
              values=[t.value for t in study.trials], params=[t.params for t in study.trials])
