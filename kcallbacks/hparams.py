"""A run's hyperparameters: what the manifest's `hparams` holds.

`hparams` is a flat mapping of names to scalars or strings, what a study
compares runs by (`kreport compare`, TensorBoard's HParams dashboard). It
merges, later ones winning: what every fit shows without being asked (the
`AUTOMATIC` names), a keras-tuner trial's values, and what the program
passed (`HistoryLogger(..., hparams=...)`, `standard_callbacks(...,
hparams=...)`; an Optuna `trial.params` as it is).
"""

import math
import numbers

from kcallbacks import _keras_fit

# Recorded at every fit: the optimizer's class and learning rate, the batch
# size, the fit's `epochs`, the model's parameter count.
AUTOMATIC = ("optimizer", "learning_rate", "batch_size", "epochs", "params")


def check_hparams(owner, hparams):
    """A plain copy of `hparams` (None: empty), or a one-line ValueError
    naming the key whose value is not a scalar or a string."""
    if hparams is None:
        return {}
    if not hasattr(hparams, "items"):
        raise ValueError(
            f"{owner}: hparams must be a dict of names to scalars or strings, "
            f"got {type(hparams).__name__}"
        )
    plain = {}
    for key, value in hparams.items():
        if not isinstance(key, str):
            raise ValueError(
                f"{owner}: hparams key {key!r} is not a string ({type(key).__name__}); "
                "names are strings"
            )
        plain[key] = _scalar(owner, key, value)
    return plain


def _scalar(owner, key, value):
    if value is None or isinstance(value, (bool, str)):
        return value
    # numpy and framework scalars (a 0-d array too) become Python's.
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    shape = getattr(value, "shape", None)
    what = f"an array of shape {tuple(shape)}" if shape is not None else f"a {type(value).__name__}"
    hint = " (flatten it: 'name.key' names)" if isinstance(value, dict) else ""
    raise ValueError(
        f"{owner}: hparams[{key!r}] is {what}; a hyperparameter is a number, "
        f"a bool, a string or None{hint}"
    )


def automatic_hparams(model, params):
    """What a fit shows of its hyperparameters without being asked; names
    that cannot be known (a schedule's rate, a dataset's batch size) are left
    out."""
    found = {}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        found["optimizer"] = type(optimizer).__name__
        rate = _initial_learning_rate(optimizer)
        if rate is not None:
            found["learning_rate"] = rate
    batch_size = _keras_fit.fit_batch_size(model)
    if batch_size is not None:
        found["batch_size"] = batch_size
    epochs = (params or {}).get("epochs")
    if isinstance(epochs, int):
        found["epochs"] = epochs
    if model.built:
        found["params"] = int(model.count_params())
    return found


def _initial_learning_rate(optimizer):
    """The rate the optimizer was made with (a schedule's initial rate)."""
    try:
        rate = optimizer.get_config().get("learning_rate")
    except (NotImplementedError, AttributeError):
        return None
    if isinstance(rate, dict):  # a serialized schedule
        rate = (rate.get("config") or {}).get("initial_learning_rate")
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool):
        rate = float(rate)
        return rate if math.isfinite(rate) else None
    return None


def merged(automatic, trial, given):
    """(hparams, names recorded automatically): later sources win. The
    given names come first, in their order (a study's columns follow it)."""
    hparams = {**trial, **given}
    recorded = [name for name in automatic if name not in hparams]
    hparams.update((name, automatic[name]) for name in recorded)
    return hparams, recorded
