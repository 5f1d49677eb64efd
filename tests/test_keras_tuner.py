"""keras-tuner's ways beyond the corpus program (tests/programs/
keras_tuner_search.py): several executions per trial, callbacks outside a
run directory, and callbacks made by hand rather than standard_callbacks."""

import os

import keras
import pytest

import kcallbacks
from training import digits_data

keras_tuner = pytest.importorskip("keras_tuner")


def build_model(hp):
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hp.Int("units", 8, 16, step=8), activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_every_execution_of_every_trial_is_a_run_and_paths_outside_runs_move_too(tmp_path):
    x, y = digits_data(256)
    tuner = keras_tuner.GridSearch(
        build_model, objective="val_loss", executions_per_trial=2,
        directory=str(tmp_path / "tuner"), project_name="p", overwrite=True,
    )
    runs, checkpoints, csv = tmp_path / "runs", tmp_path / "ckpt", tmp_path / "logs" / "log.csv"
    tuner.search(x, y, epochs=2, validation_split=0.25, verbose=0, callbacks=[
        kcallbacks.HistoryLogger(runs),
        kcallbacks.BatchLossTracker(runs),
        kcallbacks.BackupAndRestore(runs / "backup"),
        # Outside the run directory: the trial's directory goes inside.
        kcallbacks.ModelCheckpoint(str(checkpoints / "{epoch:02d}.weights.h5"),
                                   save_weights_only=True),
        kcallbacks.CSVLogger(str(csv)),
    ])
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    assert len(trials) == 2
    for trial in trials:
        for execution in (0, 1):
            where = os.path.join(f"trial_{trial.trial_id}", f"execution{execution}")
            run = kcallbacks.load_run(runs / where)
            assert run.manifest["trial"] == {
                "id": trial.trial_id, "hyperparameters": trial.hyperparameters.values,
                "tuner": "GridSearch", "execution": execution,
            }
            assert run.history["epoch"].tolist() == [0, 1]
            assert len(run.batches) == 2 * 6
            assert os.path.isdir(runs / where / "backup")
            files = sorted(f for f in os.listdir(checkpoints / where) if not f.startswith("."))
            assert files == ["01.weights.h5", "02.weights.h5"]
            assert (tmp_path / "logs" / where / "log.csv").exists()
    # Nothing was written where the callbacks were pointed outside a trial.
    assert sorted(os.listdir(runs)) == [f"trial_{t.trial_id}" for t in trials]
    assert not csv.exists()
