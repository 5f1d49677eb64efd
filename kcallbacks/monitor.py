"""MonitorCallback: what ModelCheckpoint, EarlyStopping and ReduceLROnPlateau
share: a monitored quantity, its direction, `min_delta`, a baseline, the
improvement test, and a state that a restore can put back."""

import math
import warnings

import keras

from kcallbacks import _keras_fit
from kcallbacks.arguments import as_float, check_number
from kcallbacks.run_callback import RunCallback

MODES = ("auto", "min", "max")

# Keras 2 logged accuracy as `acc`; Keras 3 logs `accuracy` (and `acc` only
# for a model compiled with metrics=["acc"]).
KERAS2_METRIC_NAMES = {"acc": "accuracy", "val_acc": "val_accuracy"}


def keras3_metric_name(name, keys):
    """The Keras 3 name under which `keys` (a fit's log keys) hold the
    Keras 2 metric `name`; None when `name` is no Keras 2 name, or is in
    `keys` itself, or its Keras 3 name is not."""
    modern = KERAS2_METRIC_NAMES.get(name)
    if modern is None or name in keys or modern not in keys:
        return None
    return modern


def json_value(value):
    """A monitored value for a state or an event: None or a float (NaN and
    infinities stay floats; the run directory writes them as tokens)."""
    return None if value is None else float(value)


class MonitorCallback(RunCallback):
    """Base of the callbacks that watch a monitored quantity.

    As Keras 3's `MonitorCallback`, except that an unknown `mode` is a
    ValueError (Keras warns and falls back to `"auto"`), a NaN value is never
    an improvement (in Keras a NaN first value becomes the best one and then
    nothing beats it), a missing monitored key warns once per fit (Keras warns
    every epoch), and `min_delta` keeps its sign (Keras negates its attribute
    in `"min"` mode).

    Keras 2's accuracy names: `monitor="acc"` / `"val_acc"`, when the logs
    lack that key but hold `accuracy` / `val_accuracy` (Keras 3's names for
    metrics=["accuracy"]), monitors those from then on, with one warning;
    `monitor` then names what is monitored. Logs that hold `acc` itself
    (metrics=["acc"]) are monitored as they are.

    The direction: `"min"` or `"max"` as given; `"auto"` infers it as Keras
    does, at first use: `loss`, `val_loss` and a compiled metric with a
    direction (`accuracy` goes up, `mae` goes down...); `acc` and `val_acc`
    go up, as Keras 2 inferred. Anything else is a ValueError asking for an
    explicit mode.

    Subclasses keep their counters in `get_state()` / `set_state(state)`. A
    state installed by `set_state` before the first epoch of a fit begins is
    kept by that fit's `on_train_begin`, whichever of the two runs first.

    Args:
        monitor: the logs key to watch, e.g. `"val_loss"` (Keras 2's
            `"acc"` / `"val_acc"` find Keras 3's `accuracy` names, see above).
        mode: `"auto"`, `"min"` or `"max"`.
        baseline: the initial `best` value (None: the first value seen).
        min_delta: a change smaller than this is no improvement.
        run_dir: the run directory for events; None: that of another
            kcallbacks callback in the fit, if any.
    """

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0,
                 run_dir=None):
        super().__init__(run_dir)
        name = type(self).__name__
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        check_number(name, "min_delta", min_delta)
        check_number(name, "baseline", baseline, optional=True)
        self.monitor = monitor
        self.mode = mode
        self.best = baseline
        self.min_delta = abs(min_delta)
        self.monitor_op = None
        self._state_restored = False
        self._warned_missing = False
        self._validates = None

    # direction and improvement

    def _set_monitor_op(self):
        if self.mode == "min":
            self.monitor_op = keras.ops.less
        elif self.mode == "max":
            self.monitor_op = keras.ops.greater
        else:
            self.monitor_op = self._inferred_monitor_op()

    def _inferred_monitor_op(self):
        # As keras/src/callbacks/monitor_callback.py.
        metric_name = self.monitor.removeprefix("val_")
        if metric_name == "loss":
            return keras.ops.less
        if self.monitor in KERAS2_METRIC_NAMES:
            # Keras 2 inferred "max" for these, whichever name the logs use.
            return keras.ops.greater
        direction = _keras_fit.metric_direction(self.model, metric_name)
        if direction is None:
            raise ValueError(
                f"{type(self).__name__} callback received monitor={self.monitor}, "
                "but Keras isn't able to automatically determine whether that "
                "metric should be maximized or minimized. Pass `mode='max'` in "
                "order to monitor based on the highest metric value, or pass "
                "`mode='min'` in order to use the lowest value."
            )
        return keras.ops.greater if direction == "up" else keras.ops.less

    @property
    def _maximizing(self):
        if self.monitor_op is None:
            self._set_monitor_op()
        return self.monitor_op is keras.ops.greater

    def _is_improvement(self, monitor_value, reference_value):
        """Whether `monitor_value` beats `reference_value` by more than
        `min_delta`. None and NaN are never an improvement; any number beats
        a missing (None or NaN) reference."""
        if monitor_value is None or math.isnan(monitor_value):
            return False
        if reference_value is None or math.isnan(reference_value):
            return True
        if self._maximizing:
            return monitor_value - self.min_delta > reference_value
        return monitor_value + self.min_delta < reference_value

    def _better_first_key(self, value):
        """A sort key that puts better values first and None/NaN last."""
        if value is None or math.isnan(value):
            return (1, 0.0)
        return (0, -value if self._maximizing else value)

    def get_monitor_value(self, logs):
        """The monitored value in `logs` as a float, or None (with one warning
        per fit naming the available keys) when it is missing or not a
        single number."""
        logs = logs or {}
        self._resolve_monitor(logs)
        raw = logs.get(self.monitor)
        value = as_float(raw)
        if value is None and self.monitor.startswith("val_") and self.unvalidated_epoch(logs):
            return None  # expected: fit(validation_freq=N) skips validation
        if value is None and not self._warned_missing:
            self._warned_missing = True
            problem = "is not available" if raw is None else f"is not a single number ({raw!r})"
            warnings.warn(
                f"{type(self).__name__} is conditioned on metric `{self.monitor}` "
                f"which {problem}. Available metrics are: {','.join(logs)}",
                stacklevel=3,
            )
        return value

    def _resolve_monitor(self, logs):
        """Monitors the Keras 3 name from now on when `logs` hold Keras 2's
        `acc` / `val_acc` under it (see the class docstring)."""
        modern = keras3_metric_name(self.monitor, logs)
        if modern is None:
            return
        warnings.warn(
            f"{type(self).__name__}: monitor={self.monitor!r} is Keras 2's name; "
            f"this fit logs {modern!r} (Keras 3), monitoring that",
            stacklevel=4,
        )
        self.monitor = modern

    def unvalidated_epoch(self, logs):
        """Whether `logs` are those of an epoch that a validating fit did
        not validate (`fit(validation_freq=N)`): they hold no `val_` key.
        Such an epoch has no `val_` value to monitor, and is not counted as
        one without improvement: patience, cooldown and the best checkpoint
        wait for the next validated epoch. (Keras' EarlyStopping and
        ReduceLROnPlateau skip it too, with a warning each time; its
        ModelCheckpoint fails to name the file.)"""
        return bool(self._validates) and not any(key.startswith("val_") for key in logs or {})

    # state

    def begin_fit(self, logs=None):
        self._warned_missing = False
        # Whether the fit validates (None: unknown, not called from a fit).
        self._validates = _keras_fit.fit_has_validation(self)
        restored, self._state_restored = self._state_restored, False
        if not restored:
            self._reset_state()

    def on_epoch_begin(self, epoch, logs=None):
        # A state restored after on_train_begin in this fit is in place now;
        # the mark must not make a later fit keep it.
        self._state_restored = False

    def end_fit(self, logs=None):
        # The same for a fit that ran no epoch (a re-run of a finished run).
        self._state_restored = False

    def _reset_state(self):
        """What on_train_begin resets, unless a state was just restored."""

    def get_state(self):
        """The callback's state as a dict of JSON-safe values (weights, if
        any, as lists of numpy arrays under keys ending in `_weights`),
        with the direction `mode="auto"` settled on: a restore must rank
        values before the model's metrics are built again (on TensorFlow,
        at the first step), which is when `"auto"` can tell."""
        state = self._own_state()
        if self.monitor_op is not None:
            state["direction"] = "max" if self._maximizing else "min"
        return state

    def set_state(self, state):
        """Puts back a state from `get_state`: the callback then behaves as
        if it had lived through the epochs that state had seen."""
        state = dict(state)
        direction = state.pop("direction", None)
        if direction is not None and self.monitor_op is None:
            self.monitor_op = keras.ops.greater if direction == "max" else keras.ops.less
        self._apply_state(state)
        self._state_restored = True

    def _own_state(self):
        """The subclass's part of `get_state`."""
        raise NotImplementedError

    def _apply_state(self, state):
        raise NotImplementedError
