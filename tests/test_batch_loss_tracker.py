"""BatchLossTracker records each step's own loss: checked against an independent recomputation.

The behavioural tests (`all_backends`) run on TensorFlow, JAX and PyTorch.
"""

import os
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

import kcallbacks
from training import digits_data

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
BACKEND = keras.backend.backend()
only_tensorflow = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow only")


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
            losses.append(float(keras.ops.convert_to_numpy(loss)))
            sizes.append(len(xb))
            twin.train_on_batch(xb, yb, sample_weight=wb)
    return np.array(losses), np.array(sizes)


@pytest.mark.all_backends
@pytest.mark.parametrize(
    "steps_per_execution, n, weighted, jit_compile, data",
    [
        pytest.param(1, 256, None, "auto", "arrays", id="spe1"),
        pytest.param(4, 256, None, "auto", "arrays", id="spe4"),
        pytest.param(1, 200, None, "auto", "arrays", id="ragged"),
        pytest.param(4, 200, "sample", "auto", "arrays", id="spe4-ragged-sample-weight"),
        pytest.param(1, 200, "class", "auto", "arrays", id="class-weight"),
        # A dataset: the step writes each batch's size, which only it knows.
        pytest.param(4, 200, None, "auto", "dataset", id="spe4-ragged-dataset"),
        pytest.param(1, 200, "sample", "auto", "dataset", id="ragged-dataset-sample-weight"),
        # XLA, which jit_compile="auto" picks on a GPU (JAX always compiles).
        pytest.param(4, 200, None, True, "arrays", id="spe4-ragged-xla", marks=only_tensorflow),
        pytest.param(4, 200, None, True, "dataset", id="spe4-ragged-dataset-xla",
                     marks=only_tensorflow),
    ],
)
def test_each_steps_loss_matches_an_independent_recomputation(
    tmp_path, steps_per_execution, n, weighted, jit_compile, data
):
    if BACKEND == "torch" and steps_per_execution > 1:
        pytest.skip("Keras runs one step per call on PyTorch (see the error test)")
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

    # Flushes mid-epoch too (on JAX each syncs the train state in), always
    # on the thread running the fit, though Keras dispatches batch-end hooks
    # to worker threads on JAX and PyTorch here.
    tracker = kcallbacks.BatchLossTracker(tmp_path / "run", flush_every_steps=3)
    flush, flush_threads = tracker.flush, []

    def flush_noting_thread():
        flush_threads.append(threading.get_ident())
        flush()

    tracker.flush = flush_noting_thread
    model = compile_model(regression_model(), steps_per_execution, jit_compile)
    if data == "dataset":
        history = model.fit(
            Batches(x, y, batch_size, fit_kwargs.pop("sample_weight", None)),
            epochs=epochs, shuffle=False, verbose=0, callbacks=[tracker], **fit_kwargs,
        )
    else:
        history = model.fit(
            x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
            callbacks=[tracker], **fit_kwargs,
        )
    assert len(flush_threads) > 2 * epochs
    assert set(flush_threads) == {threading.get_ident()}

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


class Batches(keras.utils.PyDataset):
    """The arrays in order, as a dataset: batch sizes only the step sees."""

    def __init__(self, x, y, batch_size, sample_weight=None):
        super().__init__()
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batch_size = batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.sample_weight is None:
            return self.x[part], self.y[part]
        return self.x[part], self.y[part], self.sample_weight[part]


def max_logit(y_true, y_pred):
    return keras.ops.max(y_pred, axis=-1)


@pytest.mark.all_backends
@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch only: Keras runs one step per call there")
def test_multi_step_execution_on_torch_is_a_one_line_error_before_training():
    x, y = digits_data(128)
    model = compile_model(regression_model(), steps_per_execution=4)
    with pytest.raises(ValueError, match=r"^BatchLossTracker: steps_per_execution=4 is not "
                       r"supported on the PyTorch backend .*steps_per_execution=1") as raised:
        model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[kcallbacks.BatchLossTracker()])
    assert "\n" not in str(raised.value)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


@pytest.mark.all_backends
@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch only: the other backends trace the step")
def test_no_host_round_trip_in_a_torch_step():
    """On PyTorch the recording runs eagerly at each step: it makes no
    tensor from a Python number (a host-to-device copy, which on a GPU waits
    for the device) and reads nothing back."""
    import torch
    from torch.overrides import TorchFunctionMode

    host = {torch.as_tensor, torch.tensor, torch.scalar_tensor, torch.Tensor.item,
            torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__bool__,
            torch.Tensor.__float__, torch.Tensor.__int__}

    class HostCalls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in host:
                self.calls.append(func.__name__)
            return func(*args, **(kwargs or {}))

    def watched(record, calls):
        def record_watched(*args):
            with HostCalls() as mode:
                record(*args)
            calls.append(mode.calls)
        return record_watched

    # Keras' own train_step over arrays, over a dataset (the step's size
    # kept on the host), and a custom one (rows from compute_loss).
    x, y = digits_data(96)
    for data, model in (
        ("arrays", compile_model(regression_model())),
        ("dataset", compile_model(regression_model())),
        ("custom", custom_step_model()),
    ):
        tracker = kcallbacks.BatchLossTracker()
        calls = []
        tracker._record_loss = watched(tracker._record_loss, calls)
        tracker._record_step = watched(tracker._record_step, calls)
        if data == "dataset":
            model.fit(Batches(x, y, 32), epochs=1, verbose=0, callbacks=[tracker])
        else:
            model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[tracker])
        assert calls == [[], [], []], data
        assert tracker.records["size"].tolist() == [32, 32, 32], data
        assert len(tracker.per_batch_losses) == 3


@pytest.mark.all_backends
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
        pred = keras.ops.convert_to_numpy(twin(xb, training=True))
        accuracy = float(np.mean(np.argmax(pred, axis=1) == yb))
        assert tracker.records["acc"][i] == pytest.approx(accuracy, abs=1e-6)
        assert tracker.records["max_logit"][i] == pytest.approx(float(np.mean(np.max(pred, axis=1))), rel=1e-5)
        twin.train_on_batch(xb, yb)


@pytest.mark.all_backends
def test_a_restored_step_count_truncates_later_records(tmp_path):
    run_dir = tmp_path / "run"
    x, y = digits_data(128)
    model = compile_model(regression_model())
    model.fit(x, y, batch_size=32, epochs=3, verbose=0,
              callbacks=[kcallbacks.BatchLossTracker(run_dir)])
    assert kcallbacks.load_run(run_dir).batches["step"].tolist() == list(range(12))

    # As a new process's restore of the state after epoch 0 would: the
    # optimizer's step count is 4 and training resumes at epoch 1. (A later
    # fit of the same model continues the run instead: test_fit_sequence.)
    model = compile_model(regression_model())
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(4)
    model.fit(x, y, batch_size=32, epochs=3, initial_epoch=1, verbose=0,
              callbacks=[kcallbacks.BatchLossTracker(run_dir)])
    run = kcallbacks.load_run(run_dir)
    assert run.batches["step"].tolist() == list(range(12))
    assert run.batches["epoch"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    truncated = run.events[run.events["type"] == "batches_truncated"]
    assert truncated[["step", "records_dropped"]].values.tolist() == [[4, 8]]


@pytest.mark.all_backends
def test_the_hook_is_removed_after_the_fit(tmp_path):
    x, y = digits_data(64)
    model = compile_model(regression_model())
    metrics_before = [m.name for m in model.metrics]
    tracker = kcallbacks.BatchLossTracker()
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[tracker])
    assert "compute_loss" not in vars(model)
    # Its state rode on the model as a metric during the fit, and left no
    # trace: not in the logs, not in the model's metrics after.
    assert sorted(history.history) == ["accuracy", "loss"]
    assert [m.name for m in model.metrics] == metrics_before
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert len(tracker.per_batch_losses) == 2


class EvaluateAtEpochEnd(keras.callbacks.Callback):
    """Runs its own `evaluate` (a callback list without the tracker) while
    the fit's steps are still in the tracker's buffer."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def on_epoch_end(self, epoch, logs=None):
        self.model.evaluate(self.x, self.y, batch_size=16, verbose=0)


@pytest.mark.all_backends
def test_an_evaluate_run_by_another_callback_records_no_step():
    x, y = digits_data(96)
    model = compile_model(regression_model())
    tracker = kcallbacks.BatchLossTracker()
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[EvaluateAtEpochEnd(x[:48], y[:48]), tracker])
    expected, sizes = reference_losses(x, y, 32, 2)
    assert tracker.records["step"].tolist() == list(range(6))
    assert tracker.records["size"].tolist() == sizes.tolist()
    np.testing.assert_allclose(tracker.per_batch_losses, expected, atol=1e-5, rtol=1e-5)


class TrainFunctionSeen(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.train_function = self.model.train_function


@pytest.mark.all_backends
def test_fits_without_the_tracker_and_recompiles_between_tracked_fits():
    x, y = digits_data(320)
    model = compile_model(regression_model())
    tracker = kcallbacks.BatchLossTracker(flush_every_steps=2)  # a ring of 4 steps
    first, again, recompiled = TrainFunctionSeen(), TrainFunctionSeen(), TrainFunctionSeen()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, callbacks=[first, tracker])
    # Without the tracker: 10 steps, more than its ring holds, run by a train
    # function of its own.
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    # With it again: the step traced with the ring is put back, not traced anew.
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, callbacks=[again, tracker])
    assert again.train_function is first.train_function
    assert tracker.records["step"].tolist() == [0, 1, 12, 13]
    # A new compilation (here an optimizer that leaves the weights alone) is
    # never run by the step traced for the old one.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model.fit(x[:64], y[:64], batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[recompiled, tracker])
    assert recompiled.train_function is not first.train_function
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))
    losses = tracker.records["loss"][-4:]
    np.testing.assert_allclose(losses[:2], losses[2:], rtol=1e-6)


def test_bad_arguments_are_clear_errors():
    for bad in (0, True, 2.7, "8"):
        with pytest.raises(ValueError, match=r"flush_every_steps must be >= 1 \(an integer\)"):
            kcallbacks.BatchLossTracker(flush_every_steps=bad)
    with pytest.raises(ValueError, match="flush_interval must be positive"):
        kcallbacks.BatchLossTracker(flush_interval=0)
    with pytest.raises(ValueError, match="duplicate metric names"):
        kcallbacks.BatchLossTracker(metrics=["mae", "mae"])


def saved_layout(path):
    """What a saved file holds, values aside: a .keras archive's members and
    its config, or an HDF5 file's object names."""
    import json
    import zipfile

    import h5py

    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            return sorted(archive.namelist()), config, saved_layout_of_zip(archive)
    with h5py.File(path, "r") as store:
        names = []
        store.visit(names.append)
        return sorted(names)


def saved_layout_of_zip(archive):
    import io

    import h5py

    with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as store:
        names = []
        store.visit(names.append)
        return sorted(names)


@pytest.mark.all_backends
def test_saving_during_the_fit_keeps_keras_layout(tmp_path):
    """The tracker's metric rides on the model during the fit, yet a model
    saved then has exactly the files and entries of one saved without it."""
    x, y = digits_data(64)
    model = compile_model(regression_model())

    class SaveNow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            assert any(m.name == "kc_batch_loss_tracker" for m in self.model.metrics)
            self.model.save(tmp_path / "with.keras")
            self.model.save_weights(tmp_path / "with.weights.h5")

    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[kcallbacks.BatchLossTracker(), SaveNow()])
    model.save(tmp_path / "without.keras")
    model.save_weights(tmp_path / "without.weights.h5")
    assert saved_layout(tmp_path / "with.keras") == saved_layout(tmp_path / "without.keras")
    assert saved_layout(tmp_path / "with.weights.h5") == saved_layout(tmp_path / "without.weights.h5")


@pytest.mark.all_backends
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


class TensorFlowCustomStep(keras.Sequential):
    """A train_step written as Keras' guide writes one: compute_loss called
    with keywords and no x."""

    def train_step(self, data):
        import tensorflow as tf

        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return {"loss": loss}


class TorchCustomStep(keras.Sequential):
    """The PyTorch form of the same: compute_loss with keywords and no x."""

    def train_step(self, data):
        import torch

        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        self.zero_grad()
        loss = self.compute_loss(y=y, y_pred=y_pred)
        loss.backward()
        trainable = self.trainable_weights[:]
        with torch.no_grad():
            self.optimizer.apply([v.value.grad for v in trainable], trainable)
        return {"loss": loss.detach()}  # Keras before 3.9 cannot convert a graph tensor


class JaxCustomStep(keras.Sequential):
    """The JAX form: a pure function of the state; the loss comes from
    stateless_compute_loss (keywords, no x), which carries the metrics'
    variables through."""

    def train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)

        def loss_and_updates(trainable, non_trainable, metrics_variables):
            y_pred, non_trainable = self.stateless_call(
                trainable, non_trainable, x, training=True
            )
            loss, (_, _, metrics_variables) = self.stateless_compute_loss(
                trainable, non_trainable, metrics_variables, y=y, y_pred=y_pred
            )
            return loss, (non_trainable, metrics_variables)

        (loss, (non_trainable, metrics_variables)), gradients = jax.value_and_grad(
            loss_and_updates, has_aux=True
        )(trainable, non_trainable, metrics_variables)
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        return {"loss": loss}, (trainable, non_trainable, optimizer_variables, metrics_variables)


CUSTOM_STEP = {"tensorflow": TensorFlowCustomStep, "torch": TorchCustomStep, "jax": JaxCustomStep}


def custom_step_model():
    keras.utils.set_random_seed(0)
    model = CUSTOM_STEP[BACKEND]([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.all_backends
def test_custom_train_step_with_keyword_compute_loss(tmp_path):
    x, y = digits_data(96)
    model = custom_step_model()
    tracker = kcallbacks.BatchLossTracker(flush_every_steps=2)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, validation_split=0.25,
              callbacks=[tracker])
    # 72 training samples: steps of 32, 32 and 8; validation steps are not recorded.
    assert tracker.records["size"].tolist() == [32, 32, 8]
    twin, expected = custom_step_model(), []
    for start in range(0, 72, 32):
        xb, yb = x[start:min(start + 32, 72)], y[start:min(start + 32, 72)]
        loss = twin.compute_loss(y=yb, y_pred=twin(xb, training=True))
        expected.append(float(keras.ops.convert_to_numpy(keras.ops.stop_gradient(loss))))
        twin.train_on_batch(xb, yb)
    np.testing.assert_allclose(tracker.per_batch_losses, expected, atol=1e-5, rtol=1e-5)


class JaxGuideStep(keras.Sequential):
    """A JAX train_step calling compute_loss outside any stateless scope:
    nothing it assigns can reach the step's returned state."""

    def train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)

        def loss_fn(trainable, non_trainable):
            y_pred, non_trainable = self.stateless_call(trainable, non_trainable, x, training=True)
            return self.compute_loss(x, y, y_pred), non_trainable

        (loss, non_trainable), gradients = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, non_trainable
        )
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        return {"loss": loss}, (trainable, non_trainable, optimizer_variables, metrics_variables)


@pytest.mark.all_backends
@pytest.mark.skipif(BACKEND != "jax", reason="JAX only: a train step that is a pure function")
def test_jax_compute_loss_outside_the_state_scope_is_a_clear_error():
    x, y = digits_data(64)
    keras.utils.set_random_seed(0)
    model = JaxGuideStep([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(RuntimeError, match=r"on JAX, compute_loss ran outside .*stateless_compute_loss"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[kcallbacks.BatchLossTracker()])
    # It failed after the first step, not inside it: the model's state was
    # synced back, and the model trains on without the tracker.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
