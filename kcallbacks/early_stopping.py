"""EarlyStopping: stop a fit when a monitored quantity stops improving."""

from kcallbacks._keras_fit import print_msg
from kcallbacks.arguments import check_integer, check_number
from kcallbacks.monitor import MonitorCallback, json_value
from kcallbacks.run_format import Event


class EarlyStopping(MonitorCallback):
    """Stops training when a monitored metric has stopped improving.

    Keras' `EarlyStopping`, with the same arguments and attributes (`best`,
    `wait`, `stopped_epoch`, `best_epoch`, `best_weights`), and:

    - `baseline` is honoured as documented: training stops when the model
      has not beaten the baseline within `patience` epochs, even if it
      improves every epoch. (Keras 3 resets `best` at train begin and checks
      patience only on epochs without improvement, so a run that improves
      every epoch but never reaches the baseline never stops; since
      keras-team/keras#23559 any improvement resets `wait`, so there
      `baseline` never stops a run at all.)
    - A negative `patience` or `start_from_epoch` is a ValueError at
      construction (Keras 3.15 accepts both; Keras after #23559 rejects a
      negative `patience` too, with a message our text matches).
    - A NaN monitored value is never an improvement; it counts towards
      `patience` like any epoch without improvement.
    - The stop is recorded as an `early_stop` event (`epoch`, `best_epoch`,
      `best_value`, `monitor`, `restored_best_weights`) in the fit's run
      directory, if it has one.
    - `get_state()` / `set_state(state)` save and restore `wait`, `best`,
      `best_epoch`, `stopped_epoch` and `best_weights` for a resumed fit.

    At every epoch from `start_from_epoch` on whose logs hold the monitored
    value, `wait` grows by one; it goes back to 0 when the value improves on
    `best` by more than `min_delta` and, if a `baseline` is given, also beats
    the baseline by more than `min_delta`. Training stops at the end of an
    epoch after which `wait >= patience` (that epoch is `stopped_epoch`).
    `best` and `best_epoch` follow the best value seen, baseline or not.

    Args:
        monitor: quantity to be monitored. Defaults to `"val_loss"`.
        min_delta: minimum change in the monitored quantity to qualify as an
            improvement: a change smaller than this is no improvement.
        patience: number of epochs without improvement (or, with a
            `baseline`, without beating it) after which training stops.
        verbose: 0 is silent; 1 prints a message when the callback acts.
        mode: `"auto"`, `"min"` or `"max"`: whether training aims to
            decrease or increase the monitored quantity. `"auto"` infers it
            from the name, as Keras does.
        baseline: baseline value for the monitored quantity: training stops
            if the model does not beat it within `patience` epochs.
        restore_best_weights: at the end of the fit, whether it was stopped
            by this callback or ran to its last epoch, set the model's weights
            to those at the end of the best epoch (`best_epoch`, the first
            epoch that reached `best`), even if that epoch did not beat the
            `baseline`. If no monitored epoch improved at all (every value
            NaN), that is the first monitored epoch. Nothing is restored if
            no epoch was monitored (the fit ended before `start_from_epoch`,
            or the monitored key never appeared), or if the fit ends with an
            exception. With `False`, the weights of the last epoch stay.
        start_from_epoch: number of epochs to wait before starting to
            monitor improvement (a warm-up in which training is not stopped).
        run_dir: the run directory for the `early_stop` event; None: that of
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
    stop = kcallbacks.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    history = model.fit(x, y, epochs=100, verbose=0, callbacks=[stop])
    print(len(history.history["loss"]), stop.best_epoch, stop.best)
    ```
    """

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
        run_dir=None,
    ):
        super().__init__(monitor, mode, min_delta=min_delta, run_dir=run_dir)
        check_integer("EarlyStopping", "patience", patience)
        check_integer("EarlyStopping", "start_from_epoch", start_from_epoch)
        # The baseline is a bar to beat, not a first best as in the base.
        check_number("EarlyStopping", "baseline", baseline, optional=True)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None
        self.best_epoch = 0
        self._stopped = False

    def _reset_state(self):
        # Allows an instance to be reused across fits, as in Keras.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def begin_fit(self, logs=None):
        super().begin_fit(logs)
        self._stopped = False

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            # Set up late, once the model's metrics are built.
            self._set_monitor_op()
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Until some epoch improves, the first monitored one is the best.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
                return
        if self.wait >= self.patience:
            self._stop(epoch)

    def _stop(self, epoch):
        self.stopped_epoch = epoch
        self._stopped = True
        self.model.stop_training = True
        self.record_event(
            Event.EARLY_STOP,
            epoch=self.run_epoch(epoch),
            best_epoch=self.run_epoch(self.best_epoch),
            best_value=json_value(self.best),
            monitor=self.monitor,
            restored_best_weights=bool(
                self.restore_best_weights and self.best_weights is not None
            ),
        )

    def end_fit(self, logs=None):
        super().end_fit(logs)
        if self._stopped and self.verbose > 0:
            print_msg(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print_msg(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)

    def _own_state(self):
        return {
            "wait": self.wait,
            "best": json_value(self.best),
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": None if self.best_weights is None else list(self.best_weights),
        }

    def _apply_state(self, state):
        self.wait = int(state["wait"])
        self.best = json_value(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        weights = state.get("best_weights")
        self.best_weights = None if weights is None else list(weights)
