"""What a callback can learn about the fit it is part of, for the manifest."""

import importlib.metadata
import platform
import sys

import keras

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


def fit_run_directory(callback):
    """The run directory of a kcallbacks logger in the same fit, or None.

    Lets a callback without a `run_dir` of its own log its events where the
    fit's `HistoryLogger` or `BatchLossTracker` writes. Call it from a hook
    that the fit's `CallbackList` calls (e.g. `on_train_begin`).
    """
    from kcallbacks.run_directory import RunDirectory

    for other in fit_callbacks(callback):
        run_dir = getattr(other, "run_dir", None)
        if other is not callback and isinstance(run_dir, str) and run_dir:
            return RunDirectory(run_dir, create=True)
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
