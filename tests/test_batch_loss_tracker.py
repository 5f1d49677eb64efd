"""BatchLossTracker records each step's own loss: checked against an independent recomputation."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import kcallbacks
from training import digits_data

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def regression_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(10)]
    )
    return model


def compile_model(model, steps_per_execution=1, jit_compile="auto"):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def reference_losses(x, y, batch_size, epochs, sample_weight=None):
    """Each step's loss, recomputed on the pre-step weights of a twin model
    that is stepped batch by batch with train_on_batch."""
    twin = compile_model(regression_model())
    losses, sizes = [], []
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            wb = None if sample_weight is None else sample_weight[start:start + batch_size]
            loss = twin.compute_loss(x=xb, y=yb, y_pred=twin(xb, training=True), sample_weight=wb)
            losses.append(float(loss))
            sizes.append(len(xb))
            twin.train_on_batch(xb, yb, sample_weight=wb)
    return np.array(losses), np.array(sizes)


@pytest.mark.parametrize(
    "steps_per_execution, n, weighted, jit_compile",
    [
        (1, 256, None, "auto"), (4, 256, None, "auto"), (1, 200, None, "auto"),
        (4, 200, "sample", "auto"), (1, 200, "class", "auto"),
        # XLA, which jit_compile="auto" picks on a GPU.
        (4, 200, None, True),
    ],
    ids=["spe1", "spe4", "ragged", "spe4-ragged-sample-weight", "class-weight", "spe4-ragged-xla"],
)
def test_each_steps_loss_matches_an_independent_recomputation(
    tmp_path, steps_per_execution, n, weighted, jit_compile
):
    x, y = digits_data(n)
    batch_size, epochs = 32, 2
    fit_kwargs, sample_weight = {}, None
    if weighted == "sample":
        sample_weight = np.linspace(0.1, 2.0, n).astype("float32")
        fit_kwargs["sample_weight"] = sample_weight
    elif weighted == "class":
        class_weight = {c: 1.0 + c / 3 for c in range(10)}
        fit_kwargs["class_weight"] = class_weight
        sample_weight = np.array([class_weight[c] for c in y], "float32")

    tracker = kcallbacks.BatchLossTracker(tmp_path / "run")
    model = compile_model(regression_model(), steps_per_execution, jit_compile)
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
        callbacks=[tracker], **fit_kwargs,
    )

    expected, sizes = reference_losses(x, y, batch_size, epochs, sample_weight)
    batches = kcallbacks.load_run(tmp_path / "run").batches
    steps_per_epoch = -(-n // batch_size)
    assert batches["step"].tolist() == list(range(steps_per_epoch * epochs))
    assert batches["epoch"].tolist() == np.repeat(np.arange(epochs), steps_per_epoch).tolist()
    assert batches["batch"].tolist() == list(range(steps_per_epoch)) * epochs
    assert batches["size"].tolist() == sizes.tolist()
    np.testing.assert_allclose(batches["loss"], expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(tracker.per_batch_losses, expected, atol=1e-5, rtol=1e-5)

    # Keras' epoch loss is the size-weighted mean of exactly these losses.
    for epoch in range(epochs):
        rows = batches[batches["epoch"] == epoch]
        mean = np.average(rows["loss"], weights=rows["size"])
        np.testing.assert_allclose(history.history["loss"][epoch], mean, rtol=1e-5)


def max_logit(y_true, y_pred):
    return keras.ops.max(y_pred, axis=-1)


def test_named_metrics_are_per_batch_too(tmp_path):
    x, y = digits_data(128)
    tracker = kcallbacks.BatchLossTracker(
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc"), max_logit]
    )
    model = compile_model(regression_model())
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[tracker])

    twin = compile_model(regression_model())
    for i, start in enumerate(range(0, 128, 32)):
        xb, yb = x[start:start + 32], y[start:start + 32]
        pred = twin(xb, training=True)
        accuracy = float(np.mean(np.argmax(pred, axis=1) == yb))
        assert tracker.records["acc"][i] == pytest.approx(accuracy, abs=1e-6)
        assert tracker.records["max_logit"][i] == pytest.approx(float(np.mean(np.max(pred, axis=1))), rel=1e-5)
        twin.train_on_batch(xb, yb)


def test_a_restored_step_count_truncates_later_records(tmp_path):
    run_dir = tmp_path / "run"
    x, y = digits_data(128)
    model = compile_model(regression_model())
    model.fit(x, y, batch_size=32, epochs=3, verbose=0,
              callbacks=[kcallbacks.BatchLossTracker(run_dir)])
    assert kcallbacks.load_run(run_dir).batches["step"].tolist() == list(range(12))

    # As a restore of the state after epoch 0 would: the optimizer's step
    # count goes back to 4 and training resumes at epoch 1.
    model.optimizer.iterations.assign(4)
    model.fit(x, y, batch_size=32, epochs=3, initial_epoch=1, verbose=0,
              callbacks=[kcallbacks.BatchLossTracker(run_dir)])
    run = kcallbacks.load_run(run_dir)
    assert run.batches["step"].tolist() == list(range(12))
    assert run.batches["epoch"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    truncated = run.events[run.events["type"] == "batches_truncated"]
    assert truncated[["step", "records_dropped"]].values.tolist() == [[4, 8]]


def test_the_hook_is_removed_after_the_fit(tmp_path):
    x, y = digits_data(64)
    model = compile_model(regression_model())
    tracker = kcallbacks.BatchLossTracker()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[tracker])
    assert "compute_loss" not in vars(model)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert len(tracker.per_batch_losses) == 2


def test_bad_arguments_are_clear_errors():
    for bad in (0, True, 2.7, "8"):
        with pytest.raises(ValueError, match=r"flush_every_steps must be >= 1 \(an integer\)"):
            kcallbacks.BatchLossTracker(flush_every_steps=bad)
    with pytest.raises(ValueError, match="flush_interval must be positive"):
        kcallbacks.BatchLossTracker(flush_interval=0)
    with pytest.raises(ValueError, match="duplicate metric names"):
        kcallbacks.BatchLossTracker(metrics=["mae", "mae"])


def test_sigkill_then_resume_leaves_every_step_once(tmp_path):
    run_dir, backup_dir = tmp_path / "run", tmp_path / "backup"
    script = [sys.executable, os.path.join(SCRIPTS, "train_batches.py"), str(run_dir), str(backup_dir), "6"]
    process = subprocess.Popen(script, stdout=subprocess.PIPE, text=True)
    flushed = 0
    for line in process.stdout:
        if line.startswith("FLUSHED"):
            flushed = int(line.split()[1])
            if flushed >= 3 * 16:  # three epochs of 16 steps
                break
    process.send_signal(signal.SIGKILL)
    process.wait()

    after_kill = kcallbacks.load_run(run_dir).batches
    assert after_kill["step"].tolist()[:flushed] == list(range(flushed))

    finished = subprocess.run(script, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "TRAINING_DONE" in finished.stdout
    run = kcallbacks.load_run(run_dir)
    assert run.batches["step"].tolist() == list(range(6 * 16))
    assert run.batches["epoch"].tolist() == np.repeat(np.arange(6), 16).tolist()
    assert run.warnings == []


class CustomStep(keras.Sequential):
    """A train_step written as Keras' guide writes one: compute_loss called
    with keywords and no x."""

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return {"loss": loss}


def test_custom_train_step_with_keyword_compute_loss(tmp_path):
    x, y = digits_data(96)
    keras.utils.set_random_seed(0)
    model = CustomStep([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tracker = kcallbacks.BatchLossTracker()
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, validation_split=0.25,
              callbacks=[tracker])
    # 72 training samples: steps of 32, 32 and 8; validation steps are not recorded.
    assert tracker.records["size"].tolist() == [32, 32, 8]
    assert np.all(np.isfinite(tracker.records["loss"]))
