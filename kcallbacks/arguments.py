"""Checks of constructor arguments, each failing with one clear line."""

import math

import keras
import numpy as np


def check_integer(owner, name, value, minimum=0):
    """Raises a one-line ValueError unless `value` is an int (not a bool)
    that is at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum} (an integer), got {value!r}")


def as_float(value):
    """`value` (a logs value) as a Python float when it is one real number:
    a Python or numpy scalar, a 0-d array or tensor of any backend; else
    None."""
    if value is None:
        return None
    try:
        array = keras.ops.convert_to_numpy(value)
    except (TypeError, ValueError):
        return None
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        return None
    return float(array)


def check_number(owner, name, value, optional=False):
    """Raises a one-line ValueError unless `value` is a number (not NaN), or
    None when `optional`."""
    if value is None and optional:
        return
    number = as_float(value)
    if number is None or math.isnan(number):
        expected = "a number or None" if optional else "a number"
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
