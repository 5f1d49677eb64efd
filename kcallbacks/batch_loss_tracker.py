"""BatchLossTracker: each training step's own loss, not Keras' running mean."""

import threading
import time
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from kcallbacks import _keras_fit, _step_record, _tensorflow
from kcallbacks.arguments import check_integer
from kcallbacks.fit_context import global_step
from kcallbacks.run_callback import RunCallback
from kcallbacks.run_format import Event, batch_record_dtype


class BatchLossTracker(RunCallback):
    """Records every training step's own loss into the run directory.

    The `logs["loss"]` a callback sees at `on_train_batch_end` is the running
    mean of the epoch so far, and with `steps_per_execution=N` the hook fires
    once per N steps. This tracker reads neither. For the duration of the
    fit it hooks where the compiled train step computes the loss: with
    Keras' own `train_step`, the loss tracker Keras hands each step's loss
    and batch size; with a custom one, the model's `compute_loss`. Inside
    the step, each step then writes its loss into a small on-device buffer
    at the slot the step counts (with a custom step, or named metrics,
    weighted by its batch size, with the metrics). Every step is therefore
    recorded exactly, whatever `steps_per_execution` is, at the cost of
    three operations a step with Keras' own step over arrays (see
    `_step_record`; the host knows those batch sizes). The host reads the
    buffer only when it flushes: at each epoch end, every
    `flush_every_steps` steps, and after `flush_interval` seconds, always
    between two train calls on the thread running the fit, and sets the
    step's slot back to 0. So there is no
    file write and no device-to-host read per step.

    It works the same on TensorFlow, JAX and PyTorch. The ring and its step
    counter are the variables of a small metric the model carries during
    the fit (it adds nothing to the logs, and Keras' saving skips it): on
    JAX, where the train step is a pure function of its state, that is how
    they travel through the step. On JAX a custom `train_step` must compute
    its loss with `stateless_compute_loss`; PyTorch runs one step per call,
    so there `steps_per_execution` must be 1 (a clear error says so before
    training starts). A custom `train_step` that never calls `compute_loss`
    (the GAN of Keras' guides) has no loss to record: a warning says so
    after its first epoch.

    "The batch's loss" is the value `compute_loss` returns for that batch,
    which is exactly what Keras' loss tracker averages into `logs["loss"]`:
    the compiled loss reduced over the batch (with `sample_weight` or
    `class_weight`, Keras' default reduction: the weighted sum divided by the
    number of samples), plus regularization and `add_loss` terms. A smaller
    last batch is recorded with its own `size`.

    Each record holds `step` (the global step: the optimizer's iteration
    count before the step, so it continues across epochs, later fits and
    restored runs; a later fit of the program with a new optimizer
    continues the run's count), `epoch` (the run's epoch, as
    `HistoryLogger` numbers it), `batch` (index within the epoch), `size`,
    `loss`, then the named metrics. Records go to the run directory's
    per-batch log (`load_run(run_dir).batches`) and stay in memory
    (`per_batch_losses`, `records`) for notebook use. In memory they appear
    at each flush, so at the latest at each epoch end.

    When a fit begins at global step `s` (a resumed run), records at or
    after `s` left by an earlier attempt are dropped first, so no step
    appears twice.

    Args:
        run_dir: the run directory; `None` keeps the records in memory only.
        metrics: optional metrics to record per step the same way: metric
            names (`"mae"`), `keras.metrics.Metric` instances, or functions
            `fn(y_true, y_pred)` returning per-sample values. Each is
            computed on that batch alone.
        flush_every_steps: steps between reads of the on-device buffer.
        flush_interval: seconds after which the next batch begin flushes,
            bounding what a crash can lose.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(100, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    tracker = kcallbacks.BatchLossTracker()
    model.fit(x, y, batch_size=32, epochs=2, callbacks=[tracker])
    print(tracker.per_batch_losses)  # 8 values: 4 steps per epoch, the last of 4 samples
    ```
    """

    # It has no batch-end hook (it flushes at batch begin, which Keras always
    # calls on the fit's thread), so it never keeps Keras from dispatching
    # the other callbacks' batch-end hooks asynchronously.
    async_safe = True
    # Without a run_dir of its own it keeps its records in memory only.
    borrows_run_dir = False

    def __init__(
        self, run_dir=None, metrics=None, flush_every_steps=1024, flush_interval=30.0
    ):
        super().__init__(run_dir)
        check_integer("BatchLossTracker", "flush_every_steps", flush_every_steps, minimum=1)
        if not flush_interval > 0:
            raise ValueError(
                f"BatchLossTracker: flush_interval must be positive seconds, "
                f"got {flush_interval!r}"
            )
        self.flush_every_steps = int(flush_every_steps)
        self.flush_interval = float(flush_interval)
        self._metrics = [_resolve_metric(m) for m in (metrics or [])]
        self.metric_names = [name for name, _ in self._metrics]
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ValueError(f"BatchLossTracker: duplicate metric names {self.metric_names}")
        self._chunks = []
        self._lock = threading.Lock()
        self._hooked_model = None
        self._write_mode = None
        self._array_sizes = None
        self._step_sizes = []  # PyTorch over a dataset: sizes kept here
        self._step_sizes_on_host = False
        self._training_loss_computed = False
        self._restored_epoch_start = None
        self._restored_next_step = None
        self._evaluating = False
        self._fit_thread = None
        self._unrecordable = None
        self._warned_unrecorded = False

    # --- in memory ---

    @property
    def records(self):
        """Everything this tracker has flushed, as a numpy structured array."""
        if not self._chunks:
            return np.zeros(0, dtype=batch_record_dtype(self.metric_names))
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    @property
    def per_batch_losses(self):
        """Each recorded step's own loss, in step order (floats)."""
        return self.records["loss"].astype(float).tolist()

    # --- the in-graph hook ---

    def set_model(self, model):
        super().set_model(model)
        if self._hooked_model is not model:
            self._unhook()
            self._hook(model)

    def _hook(self, model):
        _check_backend_supports(model)
        spe = int(getattr(model, "steps_per_execution", 1) or 1)
        # Half the ring is flushed at a time; the other half absorbs the steps
        # of one execution block that run before the host gets to look.
        self._capacity = 2 * max(self.flush_every_steps, spe)
        self._array_sizes = _keras_fit.fit_array_batch_sizes(model)
        self._write_mode = self._choose_write_mode(model)
        layout = (self._capacity, tuple(self.metric_names), self._write_mode)
        compiled_with = _keras_fit.loss_tracker(model)
        traced = _traced_steps.get(model)
        reuse = (
            traced is not None and traced.layout == layout
            and traced.compiled_with is compiled_with
        )
        if reuse:
            self._state = traced.ring
            self._unrecordable = traced.unrecordable
        else:
            self._unrecordable = None
            # The ring and the step counter are the variables of a metric the
            # model carries for the fit: on JAX the train step is a pure
            # function of its state, and a metric's variables are part of
            # that state (Keras maps them in the scopes compute_loss and the
            # loss tracker run in, and returns their new values).
            with _tensorflow.variable_scope(model):
                self._state = _StepRing(
                    self._capacity, self._write_mode, 2 + len(self._metrics)
                )
        _keras_fit.attach_metric(model, self._state)
        self._hook_compute_loss(model)
        if self._write_mode != _ROWS:
            sizes_in_step = self._write_mode == _LOSS_AND_SIZE
            self._step_sizes_on_host = sizes_in_step and self._state.sizes is None
            self._write_loss = _step_record.loss_writer(
                self._state, sizes_in_step and not self._step_sizes_on_host
            )
            self._hook_loss_tracker(compiled_with)
        # Keras traces the step once per model, and so do we: a train
        # function traced with this ring by an earlier fit (of the same
        # compilation) is put back; any other is traced again, with the hook.
        model.train_function = traced.train_function if reuse else None
        self._hooked_model = model

    def _choose_write_mode(self, model):
        if self._metrics or not _keras_fit.uses_keras_train_step(model):
            return _ROWS
        distribution = _tensorflow.distribution(model)
        if distribution is not None and distribution["replicas"] > 1:
            return _ROWS  # per-replica losses, summed in the step
        return _LOSS if self._array_sizes is not None else _LOSS_AND_SIZE

    def _hook_loss_tracker(self, loss_tracker):
        original = loss_tracker.update_state
        tracker = self

        def update_state_and_record(values, sample_weight=None):
            # Keras' train and test steps both report here, each just after
            # its compute_loss: only training steps are recorded (also an
            # `evaluate` that another callback runs during the fit).
            if tracker._training_loss_computed:
                tracker._record_loss(values, sample_weight)
            return original(values, sample_weight=sample_weight)

        update_state_and_record.__wrapped__ = original
        loss_tracker.update_state = update_state_and_record
        self._hooked_loss_tracker = loss_tracker

    def _hook_compute_loss(self, model):
        original = model.compute_loss
        tracker = self

        def compute_loss_and_record(*args, **kwargs):
            loss = original(*args, **kwargs)
            # Keras' call order; a custom train_step may pass keywords only.
            arguments = dict(zip(("x", "y", "y_pred", "sample_weight", "training"), args))
            arguments.update(kwargs)
            # Without a `training` argument (an override that lacks it), the
            # test step is known by being traced inside evaluation.
            training = arguments.get("training", not tracker._evaluating)
            tracker._training_loss_computed = bool(training)
            if training and loss is not None and tracker._write_mode == _ROWS:
                tracker._record_step(loss, arguments)
            return loss

        compute_loss_and_record.__wrapped__ = original
        model.compute_loss = compute_loss_and_record

    def _unhook(self):
        model = self._hooked_model
        if model is None:
            return
        if "compute_loss" in vars(model):
            del model.compute_loss
        loss_tracker = getattr(self, "_hooked_loss_tracker", None)
        if loss_tracker is not None and "update_state" in vars(loss_tracker):
            del loss_tracker.update_state
        self._hooked_loss_tracker = None
        _keras_fit.detach_metric(model, self._state)
        # The train function traced with the ring is kept for the next fit
        # with a tracker, which puts it back untraced; a fit without one
        # traces its own (this one would write past the ring's end).
        _traced_steps[model] = _TracedStep(
            (self._capacity, tuple(self.metric_names), self._write_mode), self._state,
            model.train_function, self._unrecordable, _keras_fit.loss_tracker(model),
        )
        model.train_function = None
        self._hooked_model = None

    def _record_step(self, loss, arguments):
        # Runs at trace time inside the train step (once per replica under a
        # distribution strategy): builds graph ops only, no host round trip.
        # On PyTorch it runs eagerly at each step: device ops only, and no
        # tensor made from a Python number (on a GPU each would be a copy
        # that waits for the device).
        # A step that cannot be recorded does not fail here, inside the step
        # (on JAX that would leave the model's variables purged, its state
        # not yet synced back), but at the next hook: see `_fail_if_unrecordable`.
        if keras.backend.backend() == "jax" and not _keras_fit.in_traced_state(
            self._state.count
        ):
            # Nothing assigned here could reach the step's returned state.
            self._unrecordable = (
                "BatchLossTracker: on JAX, compute_loss ran outside the scope that "
                "carries the model's metrics variables through the train step (a "
                "custom train_step calling compute_loss directly), so the step's "
                "loss cannot be recorded; compute the loss with "
                "self.stateless_compute_loss(...) in that train_step"
            )
            return
        tensors = [
            t for name in ("x", "y", "y_pred")
            for t in keras.tree.flatten(arguments.get(name)) if t is not None
        ]
        if not tensors:
            self._unrecordable = (
                "BatchLossTracker: compute_loss was called without x, y or y_pred, "
                "so the batch size is unknown; pass at least one of them"
            )
            return
        metric_values = []
        if self._metrics:
            y, y_pred = arguments.get("y"), arguments.get("y_pred")
            weights = arguments.get("sample_weight")
            metric_values = [fn(y, y_pred, weights) for _, fn in self._metrics]
        # Written into the ring, never differentiated: no stop_gradient needed.
        _step_record.record_row(self._state, loss, tensors[0], metric_values)

    def _record_loss(self, loss, size):
        # Runs at trace time in Keras' own train step (on PyTorch eagerly at
        # each step), with the loss and batch size Keras reports.
        if self._step_sizes_on_host:
            self._step_sizes.append(size)  # PyTorch: a Python int
        self._write_loss(loss, size)

    # --- Keras hooks ---

    def begin_fit(self, logs=None):
        if self.run is not None:
            self.run.open_batch_log(self.metric_names)
        self._first_epoch_of_fit = True
        self._fit_thread = threading.get_ident()
        self._epoch = None
        self._next_step = None
        self._last_flush_time = time.monotonic()

    def on_test_begin(self, logs=None):
        self._evaluating = True

    def on_test_end(self, logs=None):
        self._evaluating = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch_of_fit:
            # Run after every callback's on_train_begin, so a restore has
            # already put the optimizer's iteration count (or our state) back.
            self._first_epoch_of_fit = False
            step = self._restored_next_step
            self._restored_next_step = None
            if step is None:
                step = global_step(self.model) or 0
                # A later fit of the program continues the run's step count
                # (its optimizer may be new, counting from 0 again).
                position = self.run_position
                if position is not None and position.next_step is not None:
                    step = max(step, position.next_step)
            self._reset_count()
            self._next_step = step
            if self.run is not None:
                dropped = self.run.truncate_batches(from_step=step)
                if dropped:
                    self.run.append_event(Event.BATCHES_TRUNCATED, step=step, records_dropped=dropped)
        step = self._next_step + self._unread_steps()
        self._epoch = epoch
        self._epoch_first_step = step
        restored = self._restored_epoch_start
        self._restored_epoch_start = None
        if restored is not None and restored["epoch"] == epoch:
            # Resumed mid-epoch: batch indices count from the epoch's true start.
            self._epoch_first_step = restored["epoch_first_step"]
        self._batches_flushed_in_epoch = step - self._epoch_first_step

    def on_train_batch_begin(self, batch, logs=None):
        # Flushes happen here, on the thread that runs the fit, between two
        # train calls: Keras calls batch-begin hooks synchronously on every
        # backend, while batch-end hooks may run on a worker thread (async
        # dispatch, JAX and PyTorch). On JAX a flush syncs the train state
        # into the variables, which is safe only between train calls: a
        # worker-thread sync would race the next step, which donates (frees)
        # the state being read and can mark the model synced with a state
        # one step old. Steps done in this epoch: `batch` (the index of the
        # step about to run). Host-side counters only; no device read.
        self._fail_if_unrecordable()
        pending = batch - self._batches_flushed_in_epoch
        if pending > 0 and (
            pending >= self.flush_every_steps
            or time.monotonic() - self._last_flush_time >= self.flush_interval
        ):
            self.flush()

    def on_epoch_end(self, epoch, logs=None):
        self.flush()
        if self._batches_flushed_in_epoch == 0 and not self._warned_unrecorded:
            # The epoch trained (its end is called after its steps) and
            # recorded nothing: the train step never called compute_loss.
            self._warned_unrecorded = True
            warnings.warn(
                "BatchLossTracker: this model's train_step does not call "
                "compute_loss (a custom train_step computing its losses itself, "
                "like the GAN of Keras' guides), so no per-step loss is recorded; "
                "the epoch history has the train_step's logs",
                stacklevel=2,
            )

    def end_fit(self, logs=None):
        self.flush()
        self._unhook()
        # A state restored in a fit that trained nothing (a finished fit of
        # the program, restored) places no epoch of the next fit.
        self._restored_epoch_start = None
        self._restored_next_step = None

    def end_preempted(self, preemption):
        self.end_fit()

    def get_state(self):
        """Flushes, then returns where the current epoch began (JSON-safe)."""
        if getattr(self, "_epoch", None) is None:
            return {}
        self.flush()
        return {
            "epoch": self._epoch,
            "epoch_first_step": int(self._epoch_first_step),
            "next_step": int(self._next_step),
        }

    def set_state(self, state):
        """Restores the epoch's first step, for batch indices after a
        mid-epoch resume. The records themselves are on disk already."""
        self._restored_epoch_start = state if state and "epoch" in state else None
        self._restored_next_step = (state or {}).get("next_step")
        if self.run_position is not None:
            self.run_position.restore(next_step=self._restored_next_step)

    def flush(self):
        """Reads the steps recorded since the last flush and writes them out."""
        with self._lock:
            self._last_flush_time = time.monotonic()
            start = self._next_step
            if start is None:  # no epoch has begun in this fit
                return
            self._fail_if_unrecordable()
            if (
                keras.backend.backend() == "jax"
                and self._hooked_model is not None
                and threading.get_ident() != self._fit_thread
            ):
                raise RuntimeError(
                    "BatchLossTracker: flush() was called off the thread running "
                    "the fit; on JAX that would race the train step for its state. "
                    "Call it from a batch-begin or epoch hook"
                )
            # On JAX, mid-epoch, the current values are in the trainer's
            # state, not in the variables: reading `self.model` syncs them in
            # (Keras' Callback.model does). Only here, never per batch.
            _ = self.model
            count = self._unread_steps()
            if count == 0:
                return
            if count > self._capacity:
                raise RuntimeError(
                    f"BatchLossTracker: {count} steps ran between two flushes, "
                    f"more than its buffer holds ({self._capacity}); "
                    "raise flush_every_steps"
                )
            end = start + count
            steps = np.arange(start, end, dtype=np.int64)
            records = np.zeros(count, dtype=batch_record_dtype(self.metric_names))
            records["step"] = steps
            records["epoch"] = self.run_epoch(self._epoch)
            records["batch"] = steps - self._epoch_first_step
            rows = ops.convert_to_numpy(self._state.ring)[:count]
            if self._unread_steps() != count:
                # Possible only if training ran on while this flushed (flush()
                # called from another thread on TensorFlow or PyTorch).
                raise RuntimeError(
                    "BatchLossTracker: training ran on during a flush of its "
                    "buffer; call flush() from a batch-begin or epoch hook"
                )
            if self._write_mode == _ROWS:
                sizes = rows[:, 1]
                records["loss"] = rows[:, 0] / sizes
                for column, name in enumerate(self.metric_names, start=2):
                    records[name] = rows[:, column] / sizes
            else:
                records["loss"] = rows
                if self._write_mode == _LOSS:
                    sizes = self._array_sizes.of(records["batch"])
                elif self._step_sizes_on_host:
                    sizes = np.asarray(self._step_sizes[:count])
                else:
                    sizes = ops.convert_to_numpy(self._state.sizes)[:count]
            records["size"] = np.rint(sizes)
            self._reset_count()
            if self.run is not None:
                self.run.append_batches(records)
            self._chunks.append(records)
            self._next_step = end
            if self.run_position is not None:
                self.run_position.next_step = end
            self._batches_flushed_in_epoch = int(end - self._epoch_first_step)

    def _fail_if_unrecordable(self):
        if self._unrecordable:
            raise RuntimeError(self._unrecordable)

    def _unread_steps(self):
        """Steps the train step recorded since the host last read the ring."""
        return int(ops.convert_to_numpy(self._state.count).reshape(()))

    def _reset_count(self):
        self._state.count.assign(np.zeros(_step_record.counter_shape(), _step_record.counter_dtype()))
        self._step_sizes.clear()


class _TracedStep:
    """A model's ring and the train function traced with it, kept between
    fits: `layout` (capacity, metric names, write mode) says which trackers can reuse
    them; `unrecordable` is what tracing found wrong, if anything."""

    def __init__(self, layout, ring, train_function, unrecordable, compiled_with):
        self.layout = layout
        self.ring = ring
        self.train_function = train_function
        self.unrecordable = unrecordable
        # The compilation it was traced for (its loss tracker): another
        # compile gives the model another optimizer and loss.
        self.compiled_with = compiled_with


# model -> _TracedStep, for as long as the model lives.
_traced_steps = weakref.WeakKeyDictionary()


# How the train step writes its record (see `_step_record`):
# Keras' own train_step over arrays: the loss alone, the host knows the sizes;
_LOSS = "loss"
# Keras' own train_step over other data: the loss and the batch size;
_LOSS_AND_SIZE = "loss+size"
# a custom train_step, named metrics or several replicas: weighted rows.
_ROWS = "rows"


class _StepRing(keras.metrics.Metric):
    """The tracker's on-device state, carried by the model as a metric for
    the duration of a fit: `ring`, the steps' records from slot 0 (a loss
    per step, or in `_ROWS` mode a row of loss x size, size, then each named
    metric x size), `sizes`, the batch sizes in `_LOSS_AND_SIZE` mode where
    the step writes them, and `count`, the slot of the next step (the host
    sets it back to 0 when it has read the ring).

    Being a metric's variables puts them in `model.metrics_variables`, the
    state Keras' JAX train step takes and returns. Keras resets the model's
    metrics each epoch: `reset_state` keeps these. `result()` is empty, so
    nothing enters the logs. Created in the distribution strategy's scope
    on TensorFlow, with aggregation "only_first_replica" (see
    `_step_record`)."""

    def __init__(self, capacity, mode, columns):
        super().__init__(name="kc_batch_loss_tracker")
        # Plain variables (assigned as attributes, tracked by the metric),
        # not `add_variable`'s on-read ones: the ring row is all-reduced and
        # written on every replica, the counter counted once per step.
        shape = (capacity, columns) if mode == _ROWS else (capacity,)
        self.ring = keras.Variable(
            np.zeros(shape, "float32"), trainable=False,
            aggregation="only_first_replica", name="kc_batch_ring",
        )
        self.sizes = None
        if mode == _LOSS_AND_SIZE and keras.backend.backend() != "torch":
            self.sizes = keras.Variable(
                np.zeros(capacity, "int32"), trainable=False,
                aggregation="only_first_replica", name="kc_batch_sizes",
            )
        self.count = keras.Variable(
            np.zeros(_step_record.counter_shape(), _step_record.counter_dtype()),
            trainable=False, aggregation="only_first_replica", name="kc_batch_count",
        )

    def update_state(self, *args, **kwargs):
        """The tracker writes the variables itself, from compute_loss."""

    def reset_state(self):
        """Kept across Keras' per-epoch metric resets."""

    def result(self):
        return {}


def _check_backend_supports(model):
    """Raises, before the first step, for what a backend cannot record."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(
            f"BatchLossTracker: the {backend!r} backend cannot train; "
            "use TensorFlow, JAX or PyTorch"
        )
    spe = int(getattr(model, "steps_per_execution", 1) or 1)
    if backend == "torch" and spe > 1:
        raise ValueError(
            f"BatchLossTracker: steps_per_execution={spe} is not supported on the "
            "PyTorch backend (Keras runs one step per call there); compile with "
            "steps_per_execution=1, or use TensorFlow or JAX for multi-step calls"
        )


def _resolve_metric(metric):
    """(name, fn(y_true, y_pred, sample_weight) -> scalar) for one batch."""
    if isinstance(metric, str):
        name, metric = metric, keras.metrics.get(metric)
    else:
        name = getattr(metric, "name", None) or getattr(metric, "__name__", None)
        if not name:
            raise ValueError(f"BatchLossTracker: cannot name metric {metric!r}")
    if isinstance(metric, keras.metrics.Metric):

        def batch_value(y_true, y_pred, sample_weight):
            metric.reset_state()
            metric.update_state(y_true, y_pred, sample_weight=sample_weight)
            return metric.result()

        return name, batch_value
    if callable(metric):

        def batch_mean(y_true, y_pred, sample_weight):
            values = ops.cast(metric(y_true, y_pred), "float32")
            if sample_weight is None:
                return ops.mean(values)
            weights = ops.cast(ops.reshape(sample_weight, ops.shape(values)), "float32")
            return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1e-12)

        return name, batch_mean
    raise ValueError(
        f"BatchLossTracker: metric {metric!r} is not a name, a keras Metric or a function"
    )
