"""HistoryLogger: the epoch history of a fit, one row per epoch, in a run directory."""

import math
import time
import warnings

from kcallbacks import _keras_tuner, fit_context
from kcallbacks.hparams import automatic_hparams, check_hparams, merged
from kcallbacks.run_callback import RunCallback
from kcallbacks.run_format import Event, utc_now


def log_value(value):
    """A logs value as plain Python: floats stay floats (NaN and inf too)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    try:
        return [log_value(v) for v in value]
    except TypeError:
        return str(value)


def _is_non_finite(value):
    return isinstance(value, float) and not math.isfinite(value)


class HistoryLogger(RunCallback):
    """Writes the epoch history of a fit into a run directory.

    At each epoch end one row goes to `history.jsonl` and `history.csv`:
    `epoch` (0-based, as Keras counts), every key of the epoch's `logs`, the
    `learning_rate` the epoch trained with, `wall_time` (Unix seconds at the
    epoch's end) and `epoch_time` (seconds the epoch took, validation
    included). Both files are flushed and fsynced before training goes on, so
    a crash loses at most the epoch that was running.

    Unlike Keras' `CSVLogger`, a metric that first appears in a later epoch
    gets its own column (earlier rows are left empty there), and NaN or
    infinite values are written as such and read back as floats.

    A program's later fits into the same run directory (fine-tuning phases,
    a loop of `fit(epochs=1)`, a cell run again) continue its history: their
    epochs are numbered on from the run's last one (Keras would start each
    at its `initial_epoch`), so there is one row per epoch trained. A fit
    that passes `initial_epoch` beyond the run's last epoch keeps its
    numbers. `BackupAndRestore` keeps this numbering across restarts (the
    logger's state is the run's position).

    On a fit that starts at run epoch `e` (a resumed run, `initial_epoch=e`,
    or a later fit), rows at or after `e` from an earlier attempt are
    dropped first, so every epoch appears exactly once and the history is
    the one that led to the current weights. A program's first fit that
    starts again from epoch 0 in the same directory therefore replaces the
    old history: use a new run directory to keep it.

    The logger also keeps the run's manifest (`run.json`): versions, model
    summary, optimizer, fit parameters, the fit's callbacks, status, one
    entry per attempt, and the run's hyperparameters (`hparams`, what
    `kreport compare` compares a study's runs by): the optimizer's class and
    learning rate, the batch size, `epochs` and the parameter count,
    recorded at every fit without being asked, then a keras-tuner trial's
    values, then `hparams`.

    Args:
        run_dir: the run directory; created if missing.
        hparams: a flat dict of the run's hyperparameters, names to numbers,
            bools, strings or None (an Optuna `trial.params` as it is).
            Anything else (a nested dict, a list, an array) is a
            `ValueError` naming the key.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=3, callbacks=[kcallbacks.HistoryLogger("runs/demo")])
    print(kcallbacks.load_run("runs/demo").history)
    ```
    """

    def __init__(self, run_dir, hparams=None):
        super().__init__(run_dir)
        self.hparams = check_hparams("HistoryLogger", hparams)
        self._first_epoch_of_fit = True
        self._epoch_started = None
        self._epoch_learning_rate = None
        self._last_epoch = None
        self._epoch_offset = None

    def begin_fit(self, logs=None):
        self._first_epoch_of_fit = True
        self._last_epoch = None
        self._epoch_offset = None
        manifest = self.run.read_manifest()
        self._status_before_fit = manifest.get("status")
        attempts = manifest.get("attempts", [])
        attempts.append({"started": utc_now(), "initial_epoch": None})
        trial = _keras_tuner.trial_of(self.fit_callbacks)
        hparams, automatic = merged(
            automatic_hparams(self.model, self.params),
            check_hparams("keras-tuner trial", trial.hyperparameters) if trial else {},
            self.hparams,
        )
        self.run.update_manifest(
            status="running",
            attempts=attempts,
            environment=fit_context.environment(),
            model=fit_context.describe_model(self.model),
            optimizer=fit_context.describe_optimizer(self.model.optimizer),
            fit_params={k: log_value(v) for k, v in (self.params or {}).items()},
            distribution=self.distribution,
            callbacks=[fit_context.describe_callback(c) for c in self.fit_callbacks],
            hparams=hparams,
            hparams_automatic=automatic,
            **({"trial": trial.manifest_entry()} if trial is not None else {}),
        )

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch_of_fit:
            self._first_epoch_of_fit = False
            self._epoch_offset = self.run_epoch(epoch) - epoch
            self._begin_attempt_at(self.run_epoch(epoch))
        self._epoch_started = time.time()
        self._epoch_learning_rate = fit_context.learning_rate(self.model.optimizer)

    def _begin_attempt_at(self, epoch):
        dropped = self.run.truncate_history(epoch)
        if dropped:
            self.run.append_event(Event.HISTORY_TRUNCATED, epoch=epoch, rows_dropped=dropped)
            if epoch == 0:
                warnings.warn(
                    f"HistoryLogger: {self.run.path} held {dropped} epoch rows "
                    "from an earlier fit that started at epoch 0 too; they were "
                    "replaced. Use a new run directory to keep both.",
                    stacklevel=3,
                )
        manifest = self.run.read_manifest()
        attempts = manifest.get("attempts") or [{"started": utc_now()}]
        attempts[-1]["initial_epoch"] = epoch
        self.run.update_manifest(attempts=attempts)

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        row = {"epoch": self.run_epoch(epoch)}
        row.update((key, log_value(value)) for key, value in (logs or {}).items())
        # A learning rate already in logs (Keras' ReduceLROnPlateau puts the
        # pre-reduction rate there) is the same one we read at epoch begin.
        row.setdefault("learning_rate", self._epoch_learning_rate)
        row["wall_time"] = now
        row["epoch_time"] = now - self._epoch_started if self._epoch_started else None
        self.run.append_history(row)
        self._last_epoch = epoch
        self.run_position.next_epoch = row["epoch"] + 1
        non_finite = sorted(k for k, v in row.items() if _is_non_finite(v))
        if non_finite:
            self.record_event(Event.NON_FINITE, epoch=row["epoch"], keys=non_finite)

    def end_fit(self, logs=None):
        if self.run is None:
            return
        epochs = (self.params or {}).get("epochs")
        stopped_early = (
            self.model.stop_training
            and self._last_epoch is not None
            and epochs is not None
            and self._last_epoch < epochs - 1
        )
        attempts = self._attempts_ended()
        if self._last_epoch is None:
            # No epoch ran (e.g. a restore found the run already finished):
            # the run's status and last epoch stand.
            self.run.update_manifest(attempts=attempts, status=self._status_before_fit)
            return
        self.run.update_manifest(
            status="stopped_early" if stopped_early else "finished",
            ended=utc_now(),
            attempts=attempts,
            last_epoch=self.run_epoch(self._last_epoch),
        )

    def end_preempted(self, preemption):
        if self.run is None:
            return
        self.run.update_manifest(status="preempted",
                                 attempts=self._attempts_ended(preempted=preemption))

    def get_state(self):
        """The run's position: its next epoch, and this fit's epoch offset."""
        if self.run is None:
            return {}
        return {"next_epoch": self.run_position.next_epoch, "epoch_offset": self._epoch_offset}

    def set_state(self, state):
        if self.run is not None and state:
            self.run_position.restore(
                next_epoch=state.get("next_epoch"), epoch_offset=state.get("epoch_offset")
            )

    def _attempts_ended(self, **details):
        """The manifest's attempts, this fit's marked ended (with `details`)."""
        attempts = self.run.read_manifest().get("attempts") or [{}]
        attempts[-1].update(ended=utc_now(), **details)
        return attempts
