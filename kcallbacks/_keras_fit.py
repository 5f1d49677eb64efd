"""What kcallbacks needs from Keras' fit internals, kept in one place.

Keras gives a callback no public handle on its sibling callbacks, on the
`fit` call's arguments, on the compiled metrics before the first step, or on
the epoch a fit starts at. Each of those reaches into Keras here (private
modules, private attributes, or the call stack), so that a Keras release
that moves something breaks this module only.
"""

import sys
import weakref

import keras


def find_callback_list(callback):
    """(the Keras `CallbackList` of the fit `callback` is running in, its
    callbacks in list order), or None when no `CallbackList` dispatching to
    it is found. The `CallbackList` object stands for the fit: one per
    `fit` call.

    Looks up the call stack for the `CallbackList` calling the hook (the
    caller of `on_train_begin`). Call it from a fit hook.
    """
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, keras.callbacks.CallbackList) and any(
            c is callback for c in candidate.callbacks
        ):
            return candidate, list(candidate.callbacks)
        frame = frame.f_back
    return None


def _fit_frames(model, frame):
    """The frames of `model.fit` calls on `frame`'s stack, innermost first."""
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            yield frame
        frame = frame.f_back


def in_fit_of(model, frame):
    """Whether `frame` runs inside `model.fit`: a signal handler's test that
    the fit it watches is still running, and did not end with an exception
    that skipped on_train_end."""
    return next(_fit_frames(model, frame), None) is not None


def fit_has_validation(callback):
    """Whether the `model.fit` running `callback` validates (so its epoch
    logs hold `val_` keys); None when no `fit` call is found up the stack."""
    for frame in _fit_frames(callback.model, sys._getframe(1)):
        if "validation_data" in frame.f_locals:
            # By now `fit` has turned a validation_split into validation_data.
            return frame.f_locals["validation_data"] is not None
    return None


def _fit_data_adapter(model):
    """(the data adapter of the innermost running `model.fit`, that fit's
    frame), or (None, None) when no `fit` is up the stack."""
    for frame in _fit_frames(model, sys._getframe(1)):
        return getattr(frame.f_locals.get("epoch_iterator"), "data_adapter", None), frame
    return None, None


def fit_batch_size(model):
    """The batch size of the running `model.fit` (its data adapter's: arrays
    batched by Keras, 32 by default), or None where unknown (a dataset, a
    generator, no `fit` up the stack)."""
    adapter, _ = _fit_data_adapter(model)
    try:
        size = adapter.batch_size if adapter is not None else None
    except Exception:  # an adapter that cannot tell without peeking
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


class ArrayBatchSizes:
    """The batch sizes of a fit over arrays, which Keras batches itself:
    every batch holds `batch_size` samples but an epoch's last, which holds
    `last_size` (the remainder, when there is one)."""

    def __init__(self, batch_size, batches_per_epoch, last_size):
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.last_size = last_size

    def of(self, batch_indices):
        """The sizes of the batches at these indices within their epoch."""
        import numpy as np

        last = np.asarray(batch_indices) == self.batches_per_epoch - 1
        return np.where(last, self.last_size, self.batch_size)


def fit_array_batch_sizes(model):
    """`ArrayBatchSizes` for the running `model.fit` when its data are arrays
    that Keras batches, so the host knows each step's batch size; None where
    only the step knows (datasets, generators, a distribution that gathers
    the batch from several processes, `steps_per_epoch` with a smaller last
    batch, which then falls mid-epoch) or no `fit` is up the stack."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    if keras.distribution.distribution() is not None:
        return None
    adapter, frame = _fit_data_adapter(model)
    if not isinstance(adapter, ArrayDataAdapter):
        return None
    partial = adapter.partial_batch_size
    if partial and frame.f_locals.get("steps_per_epoch") is not None:
        return None
    return ArrayBatchSizes(adapter.batch_size, adapter.num_batches, partial or adapter.batch_size)


def uses_keras_train_step(model):
    """Whether `model` trains with Keras' own `train_step`, which reports
    each step's loss and batch size to the model's loss tracker."""
    return defined_by_keras(model, "train_step") and getattr(model, "_loss_tracker", None) is not None


def loss_tracker(model):
    """The metric Keras' `train_step` reports each step's loss to, as
    `update_state(loss, sample_weight=batch_size)`. `compile` makes a new
    one, so it also tells one compilation from the next."""
    return model._loss_tracker


def set_initial_epoch(model, epoch):
    """Makes the running `fit` start at `epoch` (None: as the caller asked),
    the way Keras' own BackupAndRestore does."""
    model._initial_epoch = epoch


def learning_rate_schedule(optimizer):
    """The `LearningRateSchedule` an optimizer was created with, else None
    (its public `learning_rate` is the schedule's current value)."""
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return rate
    return None


def defined_by_keras(obj, method):
    """Whether `obj`'s `method` is Keras' own, not a user override."""
    for cls in type(obj).__mro__:
        if method in vars(cls):
            return cls.__module__.startswith("keras.")
    return False


def print_msg(message):
    """Prints as Keras' callbacks print (to absl logging when Keras is
    told to)."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


def metric_direction(model, name):
    """`"up"` or `"down"` for a compiled metric of `model` called `name`
    that declares a direction (`accuracy` goes up, `mae` down), else None.
    As keras/src/callbacks/monitor_callback.py infers `mode="auto"`."""
    from keras.src.trainers import compile_utils

    found = None
    for container in getattr(model, "metrics", []):
        if isinstance(container, (compile_utils.CompileMetrics, compile_utils.MetricsList)):
            for metric in container.metrics:
                if metric.name == name and hasattr(metric, "_direction"):
                    found = metric._direction
    return found


def training_log_keys(model):
    """The keys of the training logs `fit` will produce (`loss`, the compiled
    metrics, ...) before the first step; None when that cannot be known yet.

    With Keras' own `train_step` the keys are the model's metric results. On
    TensorFlow, Keras builds the compiled metrics only at the first step; for
    a model with one symbolic output their names are found by building a
    throwaway copy of them. A custom `train_step` (or a multi-output model
    whose metrics are not built) gives None: only its first logs tell.
    """
    from keras.src.trainers.compile_utils import CompileMetrics

    if not all(
        defined_by_keras(model, method)
        for method in ("train_step", "compute_metrics", "get_metrics_result")
    ):
        return None
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is not None and not compile_loss.built and _output_count(model) != 1:
        return None  # its per-output loss names appear when it is built
    keys = []
    for metric in model.metrics:
        if isinstance(metric, CompileMetrics) and not metric.built:
            names = _unbuilt_compile_metric_names(model, metric)
            if names is None:
                return None
            keys.extend(names)
            continue
        try:
            result = metric.result()
        except ValueError:  # an unbuilt metric of some other kind
            return None
        keys.extend(result if isinstance(result, dict) else [metric.name])
    return keys


def _output_count(model):
    try:
        return len(model.outputs)
    except (AttributeError, TypeError, ValueError):
        return None


def _unbuilt_compile_metric_names(model, compile_metrics):
    from keras.src.trainers.compile_utils import CompileMetrics

    if _output_count(model) != 1:
        return None
    output = model.outputs[0]
    # Names depend on the metric arguments and output names, not on the
    # data, so the model's output can stand in for the labels too.
    try:
        probe = CompileMetrics(
            compile_metrics._user_metrics,
            compile_metrics._user_weighted_metrics,
            output_names=compile_metrics.output_names,
        )
        probe.build(output, output)
        return list(probe.result())
    except Exception:  # any failure only means: check at the first step
        return None


# Metrics attach_metric added, which are kcallbacks' state, not the model's.
_attached = weakref.WeakSet()


def attach_metric(model, metric):
    """Adds `metric` to `model.metrics` (so to `model.metrics_variables`,
    the state Keras' JAX train step threads through) without tracking it as
    model state: it goes into the private `model._metrics` list, which
    Keras' saving skips, so saved files keep Keras' exact layout."""
    if not any(m is metric for m in model._metrics):
        model._metrics.append(metric)
    _attached.add(metric)


def detach_metric(model, metric):
    """Undoes `attach_metric`."""
    model._metrics[:] = [m for m in model._metrics if m is not metric]
    _attached.discard(metric)


def model_metrics_variables(model):
    """`model.metrics_variables` without those of metrics attached by
    `attach_metric`: the running metrics a mid-epoch snapshot must hold
    (the same whatever kcallbacks callbacks the fit has)."""
    return [v for m in model.metrics if m not in _attached for v in m.variables]


def in_traced_state(variable):
    """Whether `variable` is mapped by the stateless scope the code runs in:
    in a stateless (JAX) train step, whether a value assigned to it reaches
    the step's returned state. False outside any stateless scope."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    scope = get_stateless_scope()
    return scope is not None and scope.get_current_value(variable) is not None


def model_optimizers(model):
    """{name: optimizer}: the compiled optimizer as `"optimizer"` (when the
    model has one), then every other optimizer the model holds as an
    attribute (a GAN's `d_optimizer` and `g_optimizer`), by attribute name.
    Keras' saving tracks optimizer attributes the same way."""
    found = {}
    compiled = getattr(model, "optimizer", None)
    if compiled is not None:
        found["optimizer"] = compiled
    attributes = vars(model)
    for name in sorted(attributes):
        value = attributes[name]
        if isinstance(value, keras.optimizers.Optimizer) and not any(
            value is known for known in found.values()
        ):
            found[name] = value
    return found


def optimizer_built_on(optimizer, variables):
    """The indices in `variables` of the variables `optimizer` was built
    for (its slots follow them), or None when it is not built or was built
    for variables not in the list."""
    if not optimizer.built:
        return None
    own = getattr(optimizer, "_trainable_variables", None)
    if own is None:
        return None
    position = {id(v): i for i, v in enumerate(variables)}
    indices = [position.get(id(v)) for v in own]
    return None if None in indices else indices


def compute_test_loss(model, x, y, y_pred, sample_weight):
    """`model.compute_loss` as a test step calls it (`training=False`, on
    Keras versions and overrides that take the argument)."""
    import inspect

    try:
        takes_training = "training" in inspect.signature(model.compute_loss).parameters
    except (TypeError, ValueError):
        takes_training = False
    extra = {"training": False} if takes_training else {}
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **extra)
