"""ReduceLROnPlateau: lower the learning rate when a monitored quantity stalls."""

import numpy as np

from kcallbacks import _keras_fit
from kcallbacks._keras_fit import print_msg
from kcallbacks.arguments import check_integer, check_number
from kcallbacks.fit_context import learning_rate
from kcallbacks.monitor import MonitorCallback, json_value
from kcallbacks.run_format import Event


# Keras' own text, from the `learning_rate` setter of
# keras/src/optimizers/base_optimizer.py (3.15.1).
KERAS_SCHEDULE_MESSAGE = (
    "This optimizer was created with a `LearningRateSchedule` object as its "
    "`learning_rate` constructor argument, hence its learning rate is not "
    "settable. If you need the learning rate to be settable, you should "
    "instantiate the optimizer with a float `learning_rate` argument."
)


class LearningRateScheduleError(ValueError, TypeError):
    """The optimizer's learning rate is a schedule, which ReduceLROnPlateau
    cannot lower. Raised at train begin; both a ValueError (kcallbacks'
    argument errors) and a TypeError (what Keras raises, at the first
    reduction), so code written for either catches it."""


def _optimizers(model):
    """(name, optimizer) pairs: one per optimizer of a multi-optimizer, else
    the model's own with name None."""
    optimizer = model.optimizer
    if hasattr(optimizer, "optimizers"):
        return [(inner.name, inner) for inner in optimizer.optimizers]
    return [(None, optimizer)]


class ReduceLROnPlateau(MonitorCallback):
    """Reduces the learning rate when a metric has stopped improving.

    Keras' `ReduceLROnPlateau`, with the same arguments and attributes
    (`best`, `wait`, `cooldown_counter`, `factor`, `min_lr`...), and:

    - bad arguments are a ValueError at construction: `factor` outside
      [0, 1), a negative `patience`, `cooldown` or `min_lr`, an unknown
      `mode` (Keras rejects only `factor >= 1`, and swallows unknown keyword
      arguments);
    - an optimizer whose learning rate is a schedule (which cannot be
      lowered) fails at train begin, not at the first reduction: a
      `LearningRateScheduleError`, both a ValueError and the TypeError
      Keras raises, with Keras' message;
    - a NaN monitored value is never an improvement;
    - each reduction is recorded as an `lr_reduced` event (`epoch`, `old`,
      `new`, and `optimizer` for a multi-optimizer) in the fit's run
      directory, if it has one;
    - `get_state()` / `set_state(state)` save and restore `wait`, `best`
      and `cooldown_counter` for a resumed fit (the rate itself lives in the
      optimizer).

    As in Keras, each epoch's logs get the `learning_rate` the epoch trained
    with (before any reduction at its end), so the history shows the rate.

    Args:
        monitor: quantity to be monitored. Defaults to `"val_loss"`.
        factor: factor by which the learning rate is reduced:
            `new_lr = lr * factor`.
        patience: number of epochs without improvement after which the
            learning rate is reduced.
        verbose: 0 is silent; 1 prints a message at each reduction.
        mode: `"auto"`, `"min"` or `"max"`, as in `EarlyStopping`.
        min_delta: threshold for measuring the new optimum, to only focus on
            significant changes.
        cooldown: number of epochs to wait before resuming normal operation
            after the learning rate has been reduced.
        min_lr: lower bound on the learning rate.
        run_dir: the run directory for `lr_reduced` events; None: that of
            another kcallbacks callback in the fit (a `HistoryLogger`), if any.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    reduce_lr = kcallbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)
    history = model.fit(x, y, epochs=20, verbose=0, callbacks=[reduce_lr])
    print(history.history["learning_rate"])
    ```
    """

    def __init__(
        self,
        monitor="val_loss",
        factor=0.1,
        patience=10,
        verbose=0,
        mode="auto",
        min_delta=1e-4,
        cooldown=0,
        min_lr=0.0,
        run_dir=None,
    ):
        super().__init__(monitor, mode, min_delta=min_delta, run_dir=run_dir)
        check_number("ReduceLROnPlateau", "factor", factor)
        ours = f"factor must be in [0, 1) (the new rate is rate * factor), got {factor!r}"
        if factor >= 1.0:
            # Keras' message first: a drop-in fails as Keras does.
            raise ValueError(
                "ReduceLROnPlateau: ReduceLROnPlateau does not support a factor "
                f">= 1.0. Received factor={factor}; {ours}"
            )
        if factor < 0:
            raise ValueError(f"ReduceLROnPlateau: {ours}")
        check_integer("ReduceLROnPlateau", "patience", patience)
        check_integer("ReduceLROnPlateau", "cooldown", cooldown)
        check_number("ReduceLROnPlateau", "min_lr", min_lr)
        if min_lr < 0:
            raise ValueError(f"ReduceLROnPlateau: min_lr must be >= 0, got {min_lr!r}")
        self.factor = factor
        self.min_lr = min_lr
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.cooldown_counter = 0
        self.wait = 0

    def _reset_state(self):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def begin_fit(self, logs=None):
        super().begin_fit(logs)
        for name, optimizer in _optimizers(self.model):
            schedule = _keras_fit.learning_rate_schedule(optimizer)
            if schedule is not None:
                which = f"optimizer {name}'s" if name else "the optimizer's"
                raise LearningRateScheduleError(
                    f"ReduceLROnPlateau: {KERAS_SCHEDULE_MESSAGE} ({which} learning "
                    f"rate is a {type(schedule).__name__} schedule, "
                    "which cannot be lowered; refused before training rather than "
                    "at the first reduction)"
                )

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        logs = logs if logs is not None else {}
        for name, optimizer in _optimizers(self.model):
            key = "learning_rate" if name is None else f"learning_rate_{name}"
            logs[key] = learning_rate(optimizer)
        current = self.get_monitor_value(logs)
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def _reduce(self, epoch):
        reduced = False
        for name, optimizer in _optimizers(self.model):
            old = learning_rate(optimizer)
            if old <= np.float32(self.min_lr):
                continue
            new = max(old * self.factor, self.min_lr)
            optimizer.learning_rate = new
            reduced = True
            if self.verbose > 0:
                which = f" {name}" if name else ""
                print_msg(
                    f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing{which} "
                    f"learning rate to {new}."
                )
            fields = {"epoch": self.run_epoch(epoch), "old": old, "new": learning_rate(optimizer)}
            if name is not None:
                fields["optimizer"] = name
            self.record_event(Event.LR_REDUCED, **fields)
        return reduced

    def _own_state(self):
        return {
            "wait": self.wait,
            "best": json_value(self.best),
            "cooldown_counter": self.cooldown_counter,
        }

    def _apply_state(self, state):
        self.wait = int(state["wait"])
        self.best = json_value(state["best"])
        self.cooldown_counter = int(state["cooldown_counter"])
