"""BackupAndRestore: an interrupted run, re-run, resumes exactly."""

import os
import random
import warnings
import zipfile

import keras
import numpy as np

from kcallbacks import _tensorflow, fit_context
from kcallbacks import run_directory as rd
from kcallbacks.background import BackgroundWriter

_SNAPSHOT_FORMAT = 1

# Events about the attempts themselves, kept when rolled-back events go.
_ATTEMPT_EVENTS = ("resumed", "resume_skipped", "history_truncated", "batches_truncated")


class SnapshotMismatchError(ValueError):
    """A backup snapshot does not fit the model or optimizer being trained."""


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the whole training state and restores it when a run restarts.

    Same arguments and use as `keras.callbacks.BackupAndRestore`: put it in
    the callbacks of `fit`, and if the process dies (a crash, `kill -9`, a
    pre-empted machine), run the same script again; `fit` continues where
    the last backup left off. Keras' version restores weights, optimizer and
    epoch. This one restores everything that decides what happens next:

    - model variables (weights, and the seed state of layers such as
      `Dropout`), optimizer variables (moments, iteration count, learning
      rate), and for a mid-epoch backup the running metric values;
    - the state of every other callback in the fit that has `get_state()` /
      `set_state(state)`: kcallbacks' `EarlyStopping` (patience, best),
      `ReduceLROnPlateau` (cooldown), `ModelCheckpoint` (best value, kept
      files), `BatchLossTracker`, and your own callbacks that implement the
      two methods, wherever they sit in the callback list;
    - Python's and NumPy's global random states.

    Each backup is a snapshot directory written to a temporary name, fsynced
    and renamed, so a crash at any instant, also in the middle of a backup,
    leaves the previous snapshot complete and loadable. A backup is taken
    once every callback has finished with the epoch (or batch) it follows,
    so the states in it agree with each other.

    On restart, a snapshot that does not match the model or optimizer
    (another architecture, another optimizer) raises `SnapshotMismatchError`
    naming the first difference, before anything is loaded (other compiled
    metrics show only at the first batch of a mid-epoch resume). The run
    directory's history and per-batch logs are cut back to the restored
    point by `HistoryLogger` and `BatchLossTracker`, its event log by this
    callback, and a `resumed` event is
    logged.

    With `save_freq=N` a backup is taken every N batches and a restart
    resumes in the middle of the epoch: the batches the interrupted run
    already trained on are drawn from the data and passed over without
    training (no batch is trained twice), and the epoch's running metrics
    are restored, so the epoch ends with the same logs. This requires the
    data to come in the same order on every run (arrays with
    `shuffle=False`, or a dataset with a fixed order); the batch hooks of
    the other callbacks still fire for the passed-over batches, and their
    states are then set back to the snapshot's. Mid-epoch resume is
    implemented for the TensorFlow backend.

    When the fit ends, the last state is kept as a snapshot marked
    finished: re-running a finished script restores the final model and
    callback states, trains no further, and says so. (Keras deletes its
    backup and would train again from scratch.) A re-run that asks for more
    epochs than a finished run trained, and that was not stopped early,
    continues from the final state. With
    `delete_checkpoint=True` the older snapshots are removed then; delete
    `backup_dir` to train afresh.

    What it cannot restore: TensorFlow's global op-level random state, which
    is what `shuffle=True` on arrays uses, so a resumed run sees a different
    shuffle order than the uninterrupted one would have. For exact resumes
    use a fixed data order, or a `tf.data` pipeline whose order depends
    only on the epoch.

    Args:
        backup_dir: directory for the snapshots; it should be used by this
            run only.
        save_freq: `"epoch"` to back up after every epoch, an integer N to
            back up every N batches, or `False` for only the final state.
        double_checkpoint: keep the previous snapshot too, and fall back to
            it if the newest cannot be read.
        delete_checkpoint: remove all but the final snapshot when training
            ends.
        async_save: write each snapshot in a background thread, one at a
            time: the fit waits while the state is copied to host memory,
            and for the previous write if it is still running. The previous snapshot stays until the new one is
            complete, so a crash mid-write loses nothing but that snapshot.
            The final snapshot is always written before `fit` returns.
        run_dir: run directory for the `resumed` event; by default the one
            of a kcallbacks logger in the same fit.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    # Run this twice: the second run restores the finished state and
    # does not train again.
    model.fit(x, y, epochs=3,
              callbacks=[kcallbacks.BackupAndRestore("backup/demo")])
    ```
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
        async_save=True,
        run_dir=None,
    ):
        super().__init__()
        if not backup_dir:
            raise ValueError("BackupAndRestore: backup_dir is empty")
        if save_freq is not False and save_freq != "epoch" and not (
            isinstance(save_freq, int) and not isinstance(save_freq, bool) and save_freq > 0
        ):
            raise ValueError(
                f"BackupAndRestore: save_freq must be 'epoch', a positive integer "
                f"or False, got {save_freq!r}"
            )
        self.backup_dir = str(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.async_save = async_save
        self.run_dir = None if run_dir is None else str(run_dir)
        self._writer = _writer_for(self.backup_dir)
        self._run = None
        self._sequence = 0

    # --- Keras hooks ---

    def on_train_begin(self, logs=None):
        # A write left by an interrupted fit in this process ends before this
        # fit clears temporary files and picks the newest snapshot.
        self._writer.finish_leftover()
        fit_context.sync_writer_role(self.model)
        callbacks = fit_context.fit_callbacks(self)
        position = next(i for i, c in enumerate(callbacks) if c is self)
        self._resumables = _resumable_callbacks(callbacks, self)
        # Callbacks after this one run their on_train_begin after the restore
        # and may reset themselves: they get their state again before the
        # first batch.
        self._restore_again = [
            key for key, c in self._resumables.items()
            if any(c is later for later in callbacks[position + 1:])
        ]
        self._run = fit_context.fit_run_directory(self)
        rd.remove_stale_temporaries(
            self.backup_dir, lambda name: name.startswith(rd.SNAPSHOT_PREFIX)
        )
        self._save_due = False
        self._batches_since_save = 0
        self._batches_counted_in_epoch = 0
        self._epoch = 0
        self._resume_batch = 0
        self._pending_states = None
        self._finished_rerun = False
        self._restore()

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_states is not None:
            self._apply_states(self._pending_states, only=self._restore_again)
            self._pending_states = None
        if self._save_due:
            self._save(epoch=epoch, batch=0)
        self._epoch = epoch
        if self._resume_batch:
            self._begin_mid_epoch_resume()

    def on_train_batch_begin(self, batch, logs=None):
        if self._replay_states is not None and batch >= self._resume_batch_target:
            # The passed-over batches are behind us: put every callback back
            # to the snapshot's moment.
            self._apply_states(self._replay_states)
            self._replay_states = None
        if self._save_due:
            self._save(epoch=self._epoch, batch=batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq in ("epoch", False) or self._replay_states is not None:
            return
        done = batch + 1 - self._batches_counted_in_epoch
        self._batches_counted_in_epoch = batch + 1
        self._batches_since_save += done
        if self._batches_since_save >= self.save_freq:
            self._save_due = True

    def on_epoch_end(self, epoch, logs=None):
        if self._replay_states is not None:
            self._cancel_skip()
            raise ValueError(
                f"BackupAndRestore: the backup in {self.backup_dir} resumes epoch {epoch} "
                f"after batch {self._resume_batch_target}, but this epoch ended first: the "
                "data or batch size changed since the backup. Use another backup_dir"
            )
        self._batches_counted_in_epoch = 0
        if self.save_freq == "epoch":
            self._save_due = True

    def on_train_end(self, logs=None):
        # Leave no resume epoch behind for a later, unrelated fit.
        self.model._initial_epoch = None
        if self._finished_rerun:
            if self._pending_states is not None:
                self._apply_states(self._pending_states, only=self._restore_again)
                self._pending_states = None
            return
        self._save(epoch=self._epoch + 1, batch=0, finished=True)
        self._writer.wait()
        if self.delete_checkpoint:
            for _, path in rd.list_snapshots(self.backup_dir)[1:]:
                rd.remove_snapshot(path)

    # --- saving ---

    def _save(self, epoch, batch, finished=False):
        self._save_due = False
        self._batches_since_save = 0
        arrays = {}
        states = {}
        for key, callback in self._resumables.items():
            states[key] = _split_arrays(callback.get_state(), f"callback|{key}", arrays)
        _put_arrays(arrays, "model", self.model.variables)
        optimizer = self.model.optimizer
        if optimizer is not None:
            _put_arrays(arrays, "optimizer", optimizer.variables)
        if batch:
            _put_arrays(arrays, "metrics", self.model.metrics_variables)
        numpy_state = np.random.get_state()
        arrays["rng|numpy"] = numpy_state[1]
        state = {
            "format": _SNAPSHOT_FORMAT,
            "time": rd.utc_now(),
            "epoch": epoch,
            "batch": batch,
            "finished": finished,
            "stopped_early": finished and bool(self.model.stop_training),
            "events_bytes": self._run.events_size() if self._run is not None else None,
            "model": _signature(self.model.variables),
            "optimizer": {
                "class": type(optimizer).__name__ if optimizer is not None else None,
                "variables": _signature(optimizer.variables) if optimizer is not None else [],
            },
            "metrics": _signature(self.model.metrics_variables) if batch else [],
            "callbacks": states,
            "rng": {
                "python": _to_json(random.getstate()),
                "numpy": [numpy_state[0], *[_plain(v) for v in numpy_state[2:]]],
            },
        }
        existing = rd.list_snapshots(self.backup_dir)
        self._sequence = max(self._sequence, existing[0][0] if existing else 0) + 1
        sequence, keep = self._sequence, 2 if self.double_checkpoint else 1

        def write():
            rd.write_snapshot(self.backup_dir, sequence, state, arrays)
            # Older snapshots go only once the new one is complete.
            for _, path in rd.list_snapshots(self.backup_dir)[keep:]:
                rd.remove_snapshot(path)

        if self.async_save:
            self._writer.submit(write)
        else:
            self._writer.wait()
            write()

    # --- restoring ---

    def _restore(self):
        self._replay_states = None
        snapshots = rd.list_snapshots(self.backup_dir)
        if not snapshots:
            return
        candidates = snapshots[:2] if self.double_checkpoint else snapshots[:1]
        error = None
        for sequence, path in candidates:
            try:
                state, arrays = rd.read_snapshot(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as problem:
                error = problem
                warnings.warn(f"BackupAndRestore: cannot read {path} ({problem})", stacklevel=2)
                continue
            self._sequence = sequence
            self._load(state, arrays)
            return
        raise ValueError(
            f"BackupAndRestore: no readable snapshot in {self.backup_dir} ({error})"
        )

    def _load(self, state, arrays):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        # Check everything before assigning anything: nothing half-loaded.
        _check_signature("model", state["model"], self.model.variables, self.backup_dir)
        saved_optimizer = state["optimizer"]
        current_class = type(optimizer).__name__ if optimizer is not None else None
        if saved_optimizer["class"] != current_class:
            raise SnapshotMismatchError(
                f"BackupAndRestore: the backup in {self.backup_dir} was made with "
                f"optimizer {saved_optimizer['class']}, this model uses {current_class}"
            )
        if optimizer is not None:
            _check_signature(
                "optimizer", saved_optimizer["variables"], optimizer.variables, self.backup_dir
            )
        unknown = sorted(set(state["callbacks"]) - set(self._resumables))
        if unknown:
            warnings.warn(
                f"BackupAndRestore: the backup holds states of callbacks this fit "
                f"does not have: {unknown}", stacklevel=3,
            )

        _assign(self.model.variables, arrays, "model")
        if optimizer is not None:
            _assign(optimizer.variables, arrays, "optimizer")
        states = {
            key: _join_arrays(value, f"callback|{key}", arrays)
            for key, value in state["callbacks"].items()
            if key in self._resumables
        }
        self._apply_states(states)
        self._pending_states = states
        random.setstate(_to_tuple(state["rng"]["python"]))
        name, *rest = state["rng"]["numpy"]
        np.random.set_state((name, arrays["rng|numpy"], *rest))

        epoch, batch = state["epoch"], state["batch"]
        if self._run is not None and state.get("events_bytes") is not None:
            # Events logged after the snapshot belong to training that is
            # now rolled back (it will happen again, and be logged again).
            self._run.truncate_events(state["events_bytes"], keep_types=_ATTEMPT_EVENTS)
        # How Keras' own BackupAndRestore makes fit start at a later epoch.
        self.model._initial_epoch = epoch
        self._epoch = epoch
        requested = (self.params or {}).get("epochs", epoch)
        if state.get("finished") and (state.get("stopped_early") or epoch >= requested):
            self._finished_rerun = True
            self.model._initial_epoch = max(epoch, requested)
            message = (
                f"BackupAndRestore: the run in {self.backup_dir} already finished "
                f"after {epoch} epochs; restored its final state, not training again. "
                "Delete the backup directory to train afresh."
            )
            print(message, flush=True)
            self._log_event("resume_skipped", epoch=epoch, reason="finished")
            return
        if batch:
            self._resume_batch = batch
            self._resume_metrics = (state["metrics"], arrays)
            self._replay_states = states
            self._resume_batch_target = batch
        self._log_event("resumed", epoch=epoch, batch=batch,
                        step=int(keras.ops.convert_to_numpy(optimizer.iterations))
                        if optimizer is not None else None)

    def _begin_mid_epoch_resume(self):
        batches = self._resume_batch
        self._resume_batch = 0
        saved_metrics, arrays = self._resume_metrics
        model = self.model

        def build_metrics(data):
            # Compiled metrics are built on their first batch: build them on
            # the first passed-over batch (the saved sums replace its values).
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            model.compute_metrics(x, y, model(x, training=False), sample_weight)

        def restore_metrics():
            _check_signature("metrics", saved_metrics, model.metrics_variables, self.backup_dir)
            _assign(model.metrics_variables, arrays, "metrics")

        self._batches_counted_in_epoch = batches
        self._cancel_skip = _tensorflow.skip_batches(model, batches, build_metrics, restore_metrics)

    def _apply_states(self, states, only=None):
        for key, value in states.items():
            if only is None or key in only:
                self._resumables[key].set_state(value)

    def _log_event(self, event_type, **fields):
        if self._run is not None:
            self._run.append_event(event_type, **fields)


# One background writer per backup directory, shared by the callback
# instances of successive fits in a process (a notebook cell run again), so
# a new fit waits for a write that an interrupted one left in flight.
_writers = {}


def _writer_for(backup_dir):
    key = os.path.abspath(backup_dir)
    if key not in _writers:
        _writers[key] = BackgroundWriter("kcallbacks-backup")
    return _writers[key]


def _resumable_callbacks(callbacks, this):
    """{key: callback} for callbacks with get_state/set_state. A key is the
    class name and its occurrence number, so a restart may reorder the list."""
    found, seen = {}, {}
    for callback in callbacks:
        if callback is this:
            continue
        if callable(getattr(callback, "get_state", None)) and callable(
            getattr(callback, "set_state", None)
        ):
            name = type(callback).__name__
            seen[name] = seen.get(name, 0) + 1
            found[f"{name}#{seen[name]}"] = callback
    return found


def _signature(variables):
    return [
        {"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype)} for v in variables
    ]


def _check_signature(what, saved, variables, backup_dir):
    current = _signature(variables)
    if len(saved) != len(current):
        raise SnapshotMismatchError(
            f"BackupAndRestore: the backup in {backup_dir} has {len(saved)} {what} "
            f"variables, this fit has {len(current)}; it was made for another "
            f"{what}. Use another backup_dir"
        )
    for index, (old, new) in enumerate(zip(saved, current)):
        if old["shape"] != new["shape"] or old["dtype"] != new["dtype"]:
            raise SnapshotMismatchError(
                f"BackupAndRestore: {what} variable {index} ({new['path']}) is "
                f"{new['shape']} {new['dtype']} here but {old['shape']} {old['dtype']} "
                f"({old['path']}) in the backup in {backup_dir}"
            )


def _put_arrays(arrays, prefix, variables):
    for index, variable in enumerate(variables):
        arrays[f"{prefix}|{index}"] = keras.ops.convert_to_numpy(variable)


def _assign(variables, arrays, prefix):
    for index, variable in enumerate(variables):
        variable.assign(arrays[f"{prefix}|{index}"])


def _split_arrays(state, prefix, arrays):
    """Moves list-of-array values (keys ending in `_weights`) into `arrays`."""
    plain = {}
    for key, value in (state or {}).items():
        if key.endswith("_weights") and isinstance(value, (list, tuple)):
            for index, array in enumerate(value):
                arrays[f"{prefix}|{key}|{index}"] = np.asarray(array)
            plain[key] = {"__arrays__": len(value)}
        else:
            plain[key] = value
    return plain


def _join_arrays(state, prefix, arrays):
    joined = {}
    for key, value in state.items():
        if isinstance(value, dict) and set(value) == {"__arrays__"}:
            joined[key] = [arrays[f"{prefix}|{key}|{i}"] for i in range(value["__arrays__"])]
        else:
            joined[key] = value
    return joined


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _to_json(value):
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v) for v in value]}
    return value


def _to_tuple(value):
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_to_tuple(v) for v in value["tuple"])
    return value
