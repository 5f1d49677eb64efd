"""A program's several fits into one run directory, in one process: the run
continues (history, per-batch log, checkpoint names), the train step is
traced once per model, a later fit of a finished program is new training,
and callbacks deep-copy (keras-tuner's requirement). What a re-run after a
SIGKILL does with such programs is tested on real programs in
test_real_programs."""

import copy
import os

import keras
import numpy as np
import pytest

import kcallbacks
from training import digits_data

pytestmark = pytest.mark.all_backends
BACKEND = keras.backend.backend()


class CountingSequential(keras.Sequential):
    """A model that counts the Python executions of its train step: on
    TensorFlow and JAX one per trace, on PyTorch one per step."""

    train_step_calls = 0

    def train_step(self, *args, **kwargs):
        type(self).train_step_calls += 1
        return super().train_step(*args, **kwargs)


def model_of(cls=keras.Sequential, optimizer="adam"):
    keras.utils.set_random_seed(0)
    model = cls([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                 keras.layers.Dense(10)])
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def repeated_fits(callbacks_for, fits=4):
    x, y = digits_data(256)
    CountingSequential.train_step_calls = 0
    model = model_of(CountingSequential)
    for number in range(fits):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, validation_split=0.25,
                  shuffle=False, callbacks=callbacks_for(number))
    return CountingSequential.train_step_calls


def test_repeated_fits_trace_the_train_step_as_often_as_a_bare_fit(tmp_path):
    bare = repeated_fits(lambda number: [])
    # A new suite for every fit (a cell run again), and one suite for all.
    fresh = repeated_fits(lambda number: kcallbacks.standard_callbacks(tmp_path / "fresh"))
    shared_suite = kcallbacks.standard_callbacks(tmp_path / "shared")
    shared = repeated_fits(lambda number: shared_suite)
    assert fresh == bare and shared == bare
    if BACKEND != "torch":  # PyTorch runs its step eagerly: one call a step
        assert bare <= 2


def test_later_fits_continue_the_run(tmp_path):
    run_dir = tmp_path / "run"
    x, y = digits_data(256)
    model = model_of()
    callbacks = kcallbacks.standard_callbacks(run_dir)
    histories = [
        model.fit(x, y, batch_size=64, epochs=1, validation_split=0.25, verbose=0,
                  shuffle=False, callbacks=callbacks)
        for _ in range(3)
    ]
    # A new optimizer (fine-tuning's second compile) counts its steps from
    # 0; the run's step count goes on. initial_epoch past the run's end
    # keeps its number.
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    histories.append(model.fit(x, y, batch_size=64, epochs=6, initial_epoch=4,
                               validation_split=0.25, verbose=0, shuffle=False,
                               callbacks=kcallbacks.standard_callbacks(run_dir)))

    run = kcallbacks.load_run(run_dir)
    assert run.history["epoch"].tolist() == [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(
        run.history["loss"], [v for h in histories for v in h.history["loss"]])
    assert run.batches["step"].tolist() == list(range(5 * 3))
    assert run.batches["epoch"].tolist() == np.repeat([0, 1, 2, 4, 5], 3).tolist()
    assert run.batches["batch"].tolist() == [0, 1, 2] * 5
    assert [a["initial_epoch"] for a in run.manifest["attempts"]] == [0, 1, 2, 4]
    assert run.manifest["status"] == "finished" and run.manifest["last_epoch"] == 5
    saved = run.events[run.events["type"] == "checkpoint_saved"]
    # Files named by the run's epochs: no fit overwrote another's.
    names = [os.path.basename(p) for p in saved["path"]]
    assert [int(n.split("-")[0]) for n in names] == (saved["epoch"] + 1).tolist()
    assert len(set(names)) == len(names)
    assert "resumed" not in set(run.events["type"]) and run.warnings == []


def test_a_later_fit_of_a_finished_program_trains(tmp_path):
    """Calling fit again on the same model (a notebook cell run again)
    trains on from where the model is, as Keras does; a fit of a new model
    object is the program started over, which restores the finished run."""
    run_dir = tmp_path / "run"
    x, y = digits_data(128)
    fit = dict(epochs=2, verbose=0, validation_split=0.25)
    model = model_of()
    model.fit(x, y, **fit, callbacks=kcallbacks.standard_callbacks(run_dir))
    model.fit(x, y, **fit, callbacks=kcallbacks.standard_callbacks(run_dir))
    assert kcallbacks.load_run(run_dir).history["epoch"].tolist() == [0, 1, 2, 3]
    weights = model.get_weights()

    again = model_of()
    history = again.fit(x, y, **fit, callbacks=kcallbacks.standard_callbacks(run_dir))
    assert history.history == {}
    # The program's first fit restored: the weights after its epoch 2.
    run = kcallbacks.load_run(run_dir)
    assert run.history["epoch"].tolist() == [0, 1, 2, 3]
    assert "resume_skipped" in set(run.events["type"])
    assert not all(np.array_equal(a, b) for a, b in zip(again.get_weights(), weights))


def test_callbacks_deep_copy_into_new_callbacks_with_the_same_arguments(tmp_path):
    suite = kcallbacks.standard_callbacks(tmp_path / "run", early_stopping_patience=2,
                                          reduce_lr_patience=1,
                                          batch_metrics=[keras.metrics.SparseCategoricalAccuracy()])
    x, y = digits_data(128)
    model_of().fit(x, y, epochs=1, verbose=0, validation_split=0.25, callbacks=suite)
    copies = copy.deepcopy(suite)
    for original, copied in zip(suite, copies, strict=True):
        assert type(copied) is type(original) and copied is not original
        public = {k: v for k, v in vars(original).items()
                  if not k.startswith("_") and k not in ("model", "params", "run", "best",
                                                        "wait", "best_weights",
                                                        "kept_checkpoints", "best_epoch",
                                                        "stopped_epoch", "cooldown_counter",
                                                        "monitor_op", "distribution")}
        for name, value in public.items():
            assert getattr(copied, name) == value, (type(original).__name__, name)
    # A copy trains a fit of its own.
    model_of().fit(x, y, epochs=1, verbose=0, validation_split=0.25,
                   callbacks=copy.deepcopy(suite))
