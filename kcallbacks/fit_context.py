"""What a callback can learn about the fit it is part of, for the manifest."""

import importlib.metadata
import platform
import sys

import keras
import numpy as np

# Callback attributes that are wiring, not configuration.
_NOT_CONFIG = {"model", "params", "validation_data"}


def fit_callbacks(callback):
    """The callbacks of the fit `callback` is running in, in list order.

    Keras gives a callback no handle on its siblings, so this looks up the
    call stack for the `CallbackList` that is dispatching to `callback` (it is
    the caller of `on_train_begin`). Falls back to `[callback]` when the hook
    was called some other way.
    """
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, keras.callbacks.CallbackList) and any(
            c is callback for c in candidate.callbacks
        ):
            return list(candidate.callbacks)
        frame = frame.f_back
    return [callback]


def fit_run_directory(callback):
    """The run directory `callback` should record its events in, or None.

    Its own `run_dir` when it has one, else that of the first kcallbacks
    callback in the same fit that has one (a `HistoryLogger`, say). Call it
    from `on_train_begin`.
    """
    from kcallbacks.run_directory import RunDirectory

    siblings = [c for c in fit_callbacks(callback) if c is not callback]
    for candidate in [callback, *siblings]:
        if not type(candidate).__module__.startswith("kcallbacks."):
            continue
        run_dir = getattr(candidate, "run_dir", None)
        if run_dir is not None:
            return RunDirectory(run_dir, create=True)
    return None


def fit_has_validation(callback):
    """Whether the `model.fit` running `callback` validates (so its epoch
    logs hold `val_` keys); None when no `fit` call is found up the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is callback.model:
            if "validation_data" in frame.f_locals:
                # By now `fit` has turned a validation_split into validation_data.
                return frame.f_locals["validation_data"] is not None
        frame = frame.f_back
    return None


def defined_by_keras(obj, method):
    """Whether `obj`'s `method` is Keras' own, not a user override."""
    for cls in type(obj).__mro__:
        if method in vars(cls):
            return cls.__module__.startswith("keras.")
    return False


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


def host_array(value):
    """A variable's (or tensor's) current value as a numpy array, without a
    copy where the backend allows: on TensorFlow, a view of the variable's
    buffer that is valid only until the variable next changes. Copy it before
    training goes on."""
    if isinstance(value, keras.Variable):
        value = value.value
    read_value = getattr(value, "read_value", None)  # a TensorFlow variable
    if callable(read_value):
        value = read_value()
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        return keras.ops.convert_to_numpy(value)


def _json_simple(value, depth=0):
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple)) and depth < 2 and len(value) <= 32:
        return all(_json_simple(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 2 and len(value) <= 32:
        return all(
            isinstance(k, str) and _json_simple(v, depth + 1) for k, v in value.items()
        )
    return False


def describe_callback(callback):
    """A callback's class and its public, JSON-simple attributes."""
    config = {
        name: value
        for name, value in vars(callback).items()
        if not name.startswith("_") and name not in _NOT_CONFIG and _json_simple(value)
    }
    cls = type(callback)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "config": config}


def describe_model(model):
    lines = []

    def collect(line, *args, **kwargs):
        lines.append(str(line))

    try:
        model.summary(print_fn=collect)
    except ValueError:
        # An unbuilt subclassed model has no summary; the counts still help.
        pass
    return {
        "name": model.name,
        "class": type(model).__name__,
        "summary": "\n".join(lines),
        "total_params": int(model.count_params()) if model.built else None,
        "trainable_params": int(
            sum(int(keras.ops.size(w)) for w in model.trainable_weights)
        ),
    }


def describe_optimizer(optimizer):
    if optimizer is None:
        return None
    try:
        config = optimizer.get_config()
    except (NotImplementedError, AttributeError):
        config = {}
    config = {k: v for k, v in config.items() if _json_simple(v)}
    return {"class": type(optimizer).__name__, "config": config}


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment():
    """Versions that decide what a run's numbers mean."""
    from kcallbacks import __version__

    tensorflow = sys.modules.get("tensorflow")
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "tensorflow": getattr(tensorflow, "__version__", None)
        or _version("tensorflow")
        or _version("tensorflow-cpu"),
        "numpy": _version("numpy"),
        "kcallbacks": __version__,
    }


def current_learning_rate(model):
    """The optimizer's current learning rate as a float, or None."""
    optimizer = getattr(model, "optimizer", None)
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(rate))
    except (TypeError, ValueError):
        return None


def sync_writer_role(model):
    """Lets the model's strategy decide which process writes the run, when
    its cluster resolver knows the task (TF_CONFIG decides otherwise), and
    returns the distribution summary for the manifest."""
    from kcallbacks import _tensorflow
    from kcallbacks.run_directory import set_chief

    info = _tensorflow.distribution(model)
    if info and "task_type" in info:
        task_type, task_id = info["task_type"], info["task_id"]
        set_chief(
            task_type == "chief"
            or (task_type == "worker" and task_id == 0 and not info["has_chief"])
        )
    return info
