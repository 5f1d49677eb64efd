"""What a callback can read about the fit it is part of: the model, the
optimizer, the environment (for the manifest), the learning rate and the
global step. Public Keras API only."""

import importlib.metadata
import platform
import sys

import keras

# Callback attributes that are wiring, not configuration.
_NOT_CONFIG = {"model", "params", "validation_data", "run", "distribution"}


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

    backend = keras.backend.backend()
    # Each backend is named after its framework's module, loaded by Keras.
    framework = sys.modules.get(backend)
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": backend,
        "backend_version": getattr(framework, "__version__", None),
        "numpy": _version("numpy"),
        "kcallbacks": __version__,
    }


def learning_rate(optimizer):
    """An optimizer's current learning rate as a float; None without an
    optimizer or a rate that is one number."""
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(rate))
    except (TypeError, ValueError):
        return None


def global_step(model):
    """The number of training steps the model's optimizer has taken (its
    `iterations`), or None without an optimizer."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(keras.ops.convert_to_numpy(optimizer.iterations))
