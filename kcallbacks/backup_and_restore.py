"""BackupAndRestore: an interrupted run, re-run, resumes exactly."""

import contextlib
import os
import signal
import sys
import warnings
import zipfile

import keras

from kcallbacks import (
    _jax,
    _keras_fit,
    _mid_epoch,
    _random_states,
    fit_sequence,
    preemption,
    snapshots,
    writer_lock,
)
from kcallbacks.background import BackgroundWriter
from kcallbacks.durable_io import remove_stale_temporaries
from kcallbacks.fit_context import global_step
from kcallbacks.host_copies import HostBuffers
from kcallbacks.run_callback import RunCallback
from kcallbacks.run_format import Event, utc_now
from kcallbacks.writer_role import is_chief


class BackupAndRestore(RunCallback):
    """Backs up the whole training state and restores it when a run restarts.

    Same arguments and use as `keras.callbacks.BackupAndRestore`: put it in
    the callbacks of `fit`, and if the process dies (a crash, `kill -9`, a
    pre-empted machine), run the same script again; `fit` continues where
    the last backup left off. Keras' version restores weights, optimizer and
    epoch. This one restores everything that decides what happens next:

    - model variables (weights, and the seed state of layers such as
      `Dropout`), the variables of the compiled optimizer and of every
      other optimizer the model holds as an attribute (a GAN's
      `d_optimizer` and `g_optimizer`: moments, iteration count, learning
      rate), and for a mid-epoch backup the running metric values (a
      multi-output model's per-output losses too);
    - the state of every other callback in the fit that has `get_state()` /
      `set_state(state)`: kcallbacks' `EarlyStopping` (patience, best),
      `ReduceLROnPlateau` (cooldown), `ModelCheckpoint` (best value, kept
      files), `BatchLossTracker`, `HistoryLogger` (the run's position), and
      your own callbacks that implement the
      two methods, wherever they sit in the callback list (or exactly the
      callbacks named in `stateful_callbacks`);
    - every global random generator the backend draws from: Python's,
      NumPy's, Keras' global `SeedGenerator` (`keras.random` ops with
      `seed=None`), PyTorch's CPU and CUDA generators (an unseeded
      `Dropout` on PyTorch draws its masks there) and TensorFlow's global
      `tf.random.Generator`. Each is put back at the moment of the fit it
      was saved at (the epoch's or batch's beginning), so the resumed run
      draws the same numbers as the uninterrupted one.

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
    implemented for the TensorFlow, JAX and PyTorch backends.

    When the fit ends, the last state is kept as a snapshot marked
    finished: re-running a finished script restores the final model and
    callback states, trains no further, and says so. (Keras deletes its
    backup and would train again from scratch.) A re-run that asks for more
    epochs than a finished run trained, and that was not stopped early,
    continues from the final state. With
    `delete_checkpoint=True` the older snapshots are removed then; delete
    `backup_dir` to train afresh.

    Programs of several fits. A program that calls `fit` several times on
    one model with this backup directory (fine-tuning in two phases, the
    second compiled with a new optimizer; a loop of `fit(epochs=1)`) is
    re-run exactly too: each snapshot records which fit of the program it
    belongs to, the final snapshot of every fit is kept, and on a re-run
    a fit that had finished restores its end state and trains nothing, the
    interrupted fit resumes at its step, and later fits train anew (see
    docs/run-format.md, "Several fits into one run"). A fit of another
    model object starts the program over. Fits of one model into one run
    directory make one run: its history and per-batch log count on across
    them (`HistoryLogger`, `BatchLossTracker`).

    Pre-emption. While `fit` runs, SIGTERM (what SLURM, Kubernetes and
    spot VMs send before they kill a job) and SIGINT (Ctrl-C) stop it at
    the next step boundary with nothing lost: the signal handler only
    notes the signal; before the next training step (or the next epoch, if
    the signal came during the epoch's last step or its validation) the
    whole state is snapshotted at that step, as `save_freq=N` does, a
    `preempted` event and status are recorded, every kcallbacks log is
    flushed, and the fit ends: SIGTERM exits the process with status 143
    (128 + 15, `preemption_exit_code` to change it), SIGINT raises
    `KeyboardInterrupt` (a notebook keeps its kernel; calling `fit` again
    continues exactly). Re-running the script resumes at that step. From
    signal to exit takes at most the step in progress plus the snapshot's
    write; signals that come during the snapshot are counted, not acted
    on. If the grace period runs out first, the previous snapshot is still
    complete. A handler you installed runs after the snapshot. Handlers
    are installed only while `fit` runs, only on the main thread (Python
    handles signals only there: off it, a warning, and the signals do what
    they did before), and a signal the process ignores stays ignored.

    What it cannot restore: TensorFlow's op-level random state (stateful
    ops such as `tf.random.shuffle` without a seed of their own, whose
    position TensorFlow keeps inside the runtime). On the TensorFlow
    backend that is what `shuffle=True` on arrays uses, so a resumed run
    sees a different shuffle order than the uninterrupted one would have.
    For exact resumes there use a fixed data order, or a `tf.data` pipeline
    whose order depends only on the epoch. (On JAX and PyTorch, array
    shuffling draws from NumPy's and PyTorch's generators, which are
    restored: epoch backups resume exactly with `shuffle=True` too. A
    mid-epoch resume always needs a fixed order.)

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
        stateful_callbacks: None (the default) to back up every callback of
            the fit that has `get_state()` / `set_state(state)`, as found at
            train begin; or a list of callbacks, to back up and restore
            exactly those (each must have the two methods; keys are the
            class name and its occurrence number in this list). Name them
            when the hooks are called by your own training loop rather than
            by Keras' `fit`: the fit's callbacks are then unknown, and
            without this list no other callback's state is kept (with a
            warning).
        preemption_signals: the signals that stop the fit at the next step
            with a snapshot (see Pre-emption): names ("SIGUSR1") or
            numbers; the default is SIGTERM and SIGINT; None or `()` leaves
            every signal alone.
        preemption_exit_code: the exit status after a snapshot for a
            signal other than SIGINT; None (the default) for 128 + the
            signal's number (143 for SIGTERM), which schedulers read as
            killed by that signal.

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
        stateful_callbacks=None,
        preemption_signals=preemption.DEFAULT_SIGNALS,
        preemption_exit_code=None,
    ):
        super().__init__(run_dir)
        if not backup_dir:
            # Keras' message first: a drop-in fails as Keras does.
            raise ValueError(
                "BackupAndRestore: Empty `backup_dir` argument passed "
                f"(got {backup_dir!r}); name the directory for the snapshots"
            )
        _check_save_freq(save_freq)
        self.stateful_callbacks = _check_stateful_callbacks(stateful_callbacks, self)
        self.backup_dir = str(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.async_save = async_save
        self.preemption_signals = preemption.resolve_signals(preemption_signals)
        if preemption_exit_code is not None and (
            isinstance(preemption_exit_code, bool)
            or not isinstance(preemption_exit_code, int)
            or not 0 <= preemption_exit_code <= 255
        ):
            raise ValueError(
                "BackupAndRestore: preemption_exit_code must be None or an exit status "
                f"from 0 to 255, got {preemption_exit_code!r}"
            )
        self.preemption_exit_code = preemption_exit_code
        self._signals = preemption.SignalWatch(self.preemption_signals)
        self._writer = _writer_for(self.backup_dir)
        self._host_buffers = HostBuffers()
        self._sequence = 0

    def move_into_trial(self, rebase):
        super().move_into_trial(rebase)
        self.backup_dir = rebase(self.backup_dir)
        self._writer = _writer_for(self.backup_dir)

    def written_directories(self):
        return super().written_directories() + [(self.backup_dir, "backup directory")]

    # --- Keras hooks ---

    def begin_fit(self, logs=None):
        # A write left by an interrupted fit in this process ends before this
        # fit clears temporary files and picks the newest snapshot.
        self._writer.finish_leftover()
        callbacks = self.fit_callbacks
        position = next(i for i, c in enumerate(callbacks) if c is self)
        named = self.stateful_callbacks
        self._resumables = _resumable_callbacks(
            callbacks if named is None else named, self
        )
        # Callbacks after this one run their on_train_begin after the restore
        # and may reset themselves: they get their state again before the
        # first batch. So do named callbacks not seen before this one (when
        # the fit's list is unknown, their order is too).
        self._restore_again = [
            key for key, c in self._resumables.items()
            if not any(c is earlier for earlier in callbacks[:position])
        ]
        if is_chief() and self.save_freq is not False:
            for callback in self._resumables.values():
                if isinstance(callback, RunCallback):
                    callback._backed_up_by = self
        remove_stale_temporaries(self.backup_dir, snapshots.is_snapshot_name)
        if self.save_freq not in ("epoch", False):
            _mid_epoch.check_supported()
        self._save_due = False
        self._batches_since_save = 0
        self._batches_counted_in_epoch = 0
        self._epoch = 0
        self._resume_batch = 0
        self._pending_states = None
        self._pending_random_states = None
        self._finished_rerun = False
        self._new_fit_of_rerun = False
        self._restoring_earlier_end = False
        # Which fit of the program this is: fits of this model that finished
        # in this process before it, on this backup directory.
        self._fit_index = fit_sequence.finished_fits(self.backup_dir, self.model)
        self._restore()
        # Last: a failure above ends the fit with no handler left behind.
        # The handler must not touch `self.model`: on JAX that syncs the
        # train state into the variables, which in the middle of a step
        # hands the step's donated buffers to them.
        model = self.model
        # Under JAX with several processes, all must stop at one step: JAX's
        # pre-emption service agrees on it. Its SIGTERM handler stays; other
        # signals are announced to it (`_preemption_due`).
        self._sync_preemption = _jax.has_preemption_service()
        self._preemption_announced = False
        self._sync_step = 0
        self._preemption_reached = False
        self._signals.signals = tuple(
            s for s in self.preemption_signals
            if not (self._sync_preemption and s == signal.SIGTERM))
        why_not = self._signals.install(
            still_watching=lambda frame: _keras_fit.in_fit_of(model, frame))
        if why_not:
            warnings.warn(f"BackupAndRestore: pre-emption signals are not handled: {why_not}",
                          stacklevel=2)

    def on_epoch_begin(self, epoch, logs=None):
        if self._new_fit_of_rerun:
            self._new_fit_of_rerun = False
            self._drop_events_of_killed_attempt(epoch)
        self._apply_pending_states()
        if not self._resume_batch:
            # The moment an epoch backup was taken at.
            self._apply_random_states()
        if not self._sync_preemption and self._signals.received is not None \
                and not self._resume_batch:
            self._stop_preempted(epoch=epoch, batch=0)
        if self._save_due:
            self._save(epoch=epoch, batch=0)
        self._epoch = epoch
        if self._resume_batch:
            self._begin_mid_epoch_resume()

    def on_train_batch_begin(self, batch, logs=None):
        if self._replay_states is not None and batch >= self._resume_batch_target:
            # The passed-over batches are behind us: put every callback and
            # random generator back to the snapshot's moment (making the
            # epoch's data iterator may have drawn from a generator).
            self._apply_states(self._replay_states)
            self._replay_states = None
            self._apply_random_states()
        if self._preemption_due() and self._replay_states is None:
            self._stop_preempted(epoch=self._epoch, batch=batch)
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

    def end_fit(self, logs=None):
        # Leave no resume epoch behind for a later, unrelated fit.
        _keras_fit.set_initial_epoch(self.model, None)
        fit_sequence.count_finished_fit(self.backup_dir, self.model, self._fit_index)
        if self._finished_rerun:
            self._signals.uninstall()
            self._apply_pending_states()
            self._apply_random_states()
            return
        self._save(epoch=self._epoch + 1, batch=0, finished=True)
        self._writer.wait()
        if self.delete_checkpoint:
            snapshots.remove_older_snapshots(self.backup_dir, keep=1)
        self._signals.uninstall()
        if self._signals.received is not None:
            # The signal came during the fit's last step: the fit is complete
            # and saved. The callbacks after this one end it as Keras would
            # have, then the signal takes effect.
            fields = self._preemption_fields(self._epoch + 1, 0)
            self.record_event(Event.PREEMPTED, **fields, repeats=self._signals.repeats,
                              finished=True)
            callbacks = self.fit_callbacks
            for callback in callbacks[callbacks.index(self) + 1:]:
                callback.on_train_end(logs)
            self._end_for_signal(fields)

    def _what_needs_siblings(self):
        losses = []
        if self.stateful_callbacks is None:
            losses.append(
                "it backs up no other callback's state (name the callbacks whose "
                "state to keep with stateful_callbacks=[...])"
            )
        events = super()._what_needs_siblings()
        if events is not None:
            losses.append(events)
        return "; ".join(losses) or None

    # --- saving ---

    def _save(self, epoch, batch, finished=False):
        self._save_due = False
        self._batches_since_save = 0
        # The host buffers are reused: the previous snapshot's write must be
        # done with them (its error, if any, is raised here).
        self._writer.wait()
        arrays = {}
        states = {}
        for key, callback in self._resumables.items():
            states[key] = snapshots.split_callback_state(key, callback.get_state(), arrays)
        if not is_chief():
            # Every process restores from the writer's snapshots; another
            # copy in this process's scratch directory would only fill /tmp.
            return
        self._put_variables(arrays, "model", self.model.variables)
        optimizers = _keras_fit.model_optimizers(self.model)
        optimizer = optimizers.pop("optimizer", None)
        if optimizer is not None:
            self._put_variables(arrays, "optimizer", optimizer.variables)
        for name, other in optimizers.items():
            self._put_variables(arrays, f"optimizer:{name}", other.variables)
        if batch:
            self._put_variables(arrays, "metrics", _keras_fit.model_metrics_variables(self.model))
        random_states = snapshots.put_random_states(arrays, _random_states.capture())
        state = {
            "format": snapshots.SNAPSHOT_FORMAT,
            "time": utc_now(),
            "fit": self._fit_index,
            "epoch": epoch,
            "batch": batch,
            "finished": finished,
            "stopped_early": finished and bool(self.model.stop_training),
            "events_bytes": self.run.events_size() if self.run is not None else None,
            "model": snapshots.signature(self.model.variables),
            "optimizer": self._describe_optimizer(optimizer),
            "optimizers": {
                name: self._describe_optimizer(other) for name, other in optimizers.items()
            },
            "metrics": snapshots.signature(_keras_fit.model_metrics_variables(self.model))
            if batch else [],
            "callbacks": states,
            "rng": random_states,
        }
        existing = snapshots.list_snapshots(self.backup_dir)
        self._sequence = max(self._sequence, existing[0][0] if existing else 0) + 1
        sequence, keep = self._sequence, 2 if self.double_checkpoint else 1

        in_snapshot = [c for c in self._resumables.values() if isinstance(c, RunCallback)]

        def write():
            snapshots.write_snapshot(self.backup_dir, sequence, state, arrays)
            # Older snapshots go only once the new one is complete.
            snapshots.remove_older_snapshots(self.backup_dir, keep)
            for callback in in_snapshot:
                callback.snapshot_written()

        if self.async_save:
            self._writer.submit(write)
        else:
            write()

    def _describe_optimizer(self, optimizer):
        """What a snapshot records of an optimizer: its class, its
        variables' signature, and which model variables it was built for
        (a restore builds an unbuilt optimizer for the same ones)."""
        if optimizer is None:
            return {"class": None, "variables": []}
        return {
            "class": type(optimizer).__name__,
            "variables": snapshots.signature(optimizer.variables),
            "built_on": _keras_fit.optimizer_built_on(optimizer, self.model.variables),
        }

    def _put_variables(self, arrays, part, variables):
        copies = (self._host_buffers.copy((part, i), v) for i, v in enumerate(variables))
        snapshots.put_arrays(arrays, part, copies)

    # --- pre-emption ---

    def _preemption_due(self):
        """Whether to stop before this step. One process: once a signal
        came. Several JAX processes: at the step JAX's pre-emption service
        names, asked at every step by every process (the same count)."""
        if not self._sync_preemption:
            return self._signals.received is not None
        if self._signals.received is not None and not self._preemption_announced:
            _jax.announce_preemption()
            self._preemption_announced = True
        self._sync_step += 1
        if not self._preemption_reached and _jax.reached_preemption_sync_point(self._sync_step):
            self._preemption_reached = True
            if self._signals.received is None:  # JAX's notice: a SIGTERM
                self._signals.received = signal.SIGTERM
        return self._preemption_reached

    def _preemption_fields(self, epoch, batch):
        return {
            "signal": self._signals.received.name,
            "epoch": self.run_epoch(epoch),
            "batch": batch,
            "step": global_step(self.model),
        }

    def _stop_preempted(self, epoch, batch):
        """Snapshots the fit at this step boundary, ends every kcallbacks
        callback's part in it, and ends the fit as the signal asks."""
        fields = self._preemption_fields(epoch, batch)
        self._save(epoch=epoch, batch=batch)
        self._writer.wait()  # on disk before the process ends
        self._signals.uninstall()
        _keras_fit.set_initial_epoch(self.model, None)
        self.record_event(Event.PREEMPTED, **fields, repeats=self._signals.repeats)
        for callback in self.fit_callbacks:
            if isinstance(callback, RunCallback) and callback is not self:
                callback.end_preempted(fields)
        writer_lock.release(self._fit)
        self._end_for_signal(fields)

    def _end_for_signal(self, fields):
        sig = self._signals.received
        message = (
            f"BackupAndRestore: {sig.name}: the fit is saved at epoch {fields['epoch']}, "
            f"batch {fields['batch']} (step {fields['step']}) in {self.backup_dir}; "
            "run it again to continue"
        )
        print(message, file=sys.stderr, flush=True)
        preemption.end_for_signal(sig, self._signals.previous_handler(sig),
                                  self.preemption_exit_code, message)

    # --- restoring ---

    def _restore(self):
        self._replay_states = None
        found = snapshots.list_snapshots(self.backup_dir)
        if not found:
            return
        candidates, of_later_fit = self._snapshots_of_this_fit(found)
        error = None
        for sequence, path in candidates:
            try:
                state, arrays = snapshots.read_snapshot(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as problem:
                error = problem
                warnings.warn(f"BackupAndRestore: cannot read {path} ({problem})", stacklevel=2)
                continue
            self._sequence = max(self._sequence, found[0][0])
            self._load(state, arrays, of_later_fit)
            return
        if candidates:
            raise ValueError(
                f"BackupAndRestore: no readable snapshot in {self.backup_dir} ({error})"
            )

    def _snapshots_of_this_fit(self, found):
        """(the snapshots to restore this fit from, newest first; whether
        the program got further than this fit before). A program calls
        `fit` several times: its fit number k restores from snapshots of
        fit k. When the newest snapshot is of a later fit, fit k finished
        in an earlier run: it restores that fit's final snapshot and does
        not train again. When it is of an earlier fit, fit k is new: nothing
        to restore."""
        try:
            newest_fit = snapshots.fit_index(snapshots.read_state(found[0][1]))
        except (OSError, ValueError):
            newest_fit = self._fit_index  # unreadable: the fallback decides
        if newest_fit < self._fit_index:
            self._new_fit_of_rerun = True
            return [], False
        if newest_fit == self._fit_index:
            return (found[:2] if self.double_checkpoint else found[:1]), False
        for sequence, path in snapshots.snapshots_to_keep(found, keep=0):
            state = snapshots.read_state(path)
            if snapshots.fit_index(state) == self._fit_index:
                return [(sequence, path)], True
        raise snapshots.SnapshotMismatchError(
            f"BackupAndRestore: the backup in {self.backup_dir} is of fit "
            f"{newest_fit + 1} of the program but holds no final snapshot of this "
            f"fit (fit {self._fit_index + 1}); it was made by another program. "
            "Use another backup_dir"
        )

    def _load(self, state, arrays, of_later_fit=False):
        self._restoring_earlier_end = of_later_fit
        model = self.model
        optimizers = _keras_fit.model_optimizers(model)
        saved_optimizers = {"optimizer": state["optimizer"], **state.get("optimizers", {})}
        # Check everything before assigning anything: nothing half-loaded.
        snapshots.check_signature("model", state["model"], model.variables, self.backup_dir)
        names = sorted(set(saved_optimizers) | set(optimizers), key=lambda n: n != "optimizer")
        for name in names:
            saved = saved_optimizers.get(name, {"class": None, "variables": []})
            optimizer = optimizers.get(name)
            current_class = type(optimizer).__name__ if optimizer is not None else None
            if saved["class"] != current_class:
                raise snapshots.SnapshotMismatchError(
                    f"BackupAndRestore: the backup in {self.backup_dir} was made with "
                    f"{name} {saved['class']}, this model uses {current_class}"
                )
            if optimizer is None:
                continue
            if not optimizer.built and len(saved["variables"]) > len(optimizer.variables):
                # Built in the backed-up run (an optimizer builds at its
                # first step): build it for the same variables.
                built_on = saved.get("built_on")
                optimizer.build(
                    model.trainable_variables if built_on is None
                    else [model.variables[i] for i in built_on]
                )
            snapshots.check_signature(
                name, saved["variables"], optimizer.variables, self.backup_dir
            )
        unknown = sorted(set(state["callbacks"]) - set(self._resumables))
        if unknown:
            warnings.warn(
                f"BackupAndRestore: the backup holds states of callbacks this fit "
                f"does not have: {unknown}", stacklevel=3,
            )

        _assign(model.variables, arrays, "model")
        for name, optimizer in optimizers.items():
            part = "optimizer" if name == "optimizer" else f"optimizer:{name}"
            _assign(optimizer.variables, arrays, part)
        states = {
            key: snapshots.join_callback_state(key, value, arrays)
            for key, value in state["callbacks"].items()
            if key in self._resumables
        }
        self._apply_states(states)
        self._pending_states = states
        # Now, and again at the moment of the fit the snapshot was taken at.
        self._pending_random_states = snapshots.get_random_states(state["rng"], arrays)
        _random_states.restore(self._pending_random_states)

        epoch, batch = state["epoch"], state["batch"]
        # An earlier fit's end: the events after it are the later fits'.
        if not of_later_fit and self.run is not None and state.get("events_bytes") is not None:
            # Events logged after the snapshot belong to training that is
            # now rolled back (it will happen again, and be logged again).
            self.run.truncate_events(state["events_bytes"], keep_types=Event.ATTEMPTS)
        # How Keras' own BackupAndRestore makes fit start at a later epoch.
        _keras_fit.set_initial_epoch(self.model, epoch)
        self._epoch = epoch
        requested = (self.params or {}).get("epochs", epoch)
        if state.get("finished") and (
            of_later_fit or state.get("stopped_early") or epoch >= requested
        ):
            self._finished_rerun = True
            _keras_fit.set_initial_epoch(self.model, max(epoch, requested))
            # No epoch of this fit runs: the next fit computes its own offset.
            fit_sequence.forget_restored_offsets()
            which = f"fit {self._fit_index + 1} of the program" if of_later_fit else "run"
            message = (
                f"BackupAndRestore: the {which} in {self.backup_dir} already finished "
                f"after {epoch} epochs; restored its final state, not training again. "
                "Delete the backup directory to train afresh."
            )
            print(message, flush=True)
            self.record_event(Event.RESUME_SKIPPED, epoch=self.run_epoch(epoch),
                              reason="finished")
            return
        if batch:
            self._resume_batch = batch
            self._resume_metrics = (state["metrics"], arrays)
            self._replay_states = states
            self._resume_batch_target = batch
        self.record_event(Event.RESUMED, epoch=self.run_epoch(epoch), batch=batch,
                          step=global_step(self.model))

    def _drop_events_of_killed_attempt(self, epoch):
        """A fit that starts anew after earlier fits of the program: events
        about its epochs are from an attempt killed before its first backup
        (a resume cuts the log back to the snapshot instead)."""
        position = self.run_position
        if position is None or position.next_epoch is None:
            return  # the run's epochs are not counted across fits (no HistoryLogger)
        offset = self.run.event_offset_from_epoch(self.run_epoch(epoch), Event.ATTEMPTS)
        if offset is not None:
            self.run.truncate_events(offset, keep_types=Event.ATTEMPTS)

    def _begin_mid_epoch_resume(self):
        batches = self._resume_batch
        self._resume_batch = 0
        saved_metrics, arrays = self._resume_metrics
        model = self.model

        def build_metrics(data):
            # Compiled metrics, and the per-output loss trackers of a model
            # with several outputs, are built on their first batch: build
            # them on the first passed-over batch (the saved sums replace
            # its values).
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            y_pred = model(x, training=False)
            _keras_fit.compute_test_loss(model, x, y, y_pred, sample_weight)
            model.compute_metrics(x, y, y_pred, sample_weight)

        def restore_metrics():
            snapshots.check_signature(
                "metrics", saved_metrics, _keras_fit.model_metrics_variables(model), self.backup_dir
            )
            _assign(_keras_fit.model_metrics_variables(model), arrays, "metrics")

        self._batches_counted_in_epoch = batches
        self._cancel_skip = _mid_epoch.skip_batches(model, batches, build_metrics, restore_metrics)

    def _apply_pending_states(self):
        """Gives the callbacks that reset themselves after the restore (in
        their own on_train_begin) their restored state again, once."""
        if self._pending_states is not None:
            self._apply_states(self._pending_states, only=self._restore_again)
            self._pending_states = None

    def _apply_random_states(self):
        if self._pending_random_states is not None:
            _random_states.restore(self._pending_random_states)
            self._pending_random_states = None

    def _apply_states(self, states, only=None):
        earlier_end = (
            fit_sequence.restoring_an_earlier_fit_end() if self._restoring_earlier_end
            else contextlib.nullcontext()
        )
        with earlier_end:
            for key, value in states.items():
                if only is None or key in only:
                    self._resumables[key].set_state(value)


# One background writer per backup directory, shared by the callback
# instances of successive fits in a process (a notebook cell run again), so
# a new fit waits for a write that an interrupted one left in flight.
_writers = {}


def _writer_for(backup_dir):
    key = os.path.abspath(backup_dir)
    if key not in _writers:
        _writers[key] = BackgroundWriter("kcallbacks-backup")
    return _writers[key]


def _check_save_freq(save_freq):
    """`"epoch"`, a positive int or False; anything Keras also rejects fails
    with Keras' message (Keras takes 0, negatives and bools as ints)."""
    if save_freq is False or save_freq == "epoch":
        return
    ours = f"save_freq must be 'epoch', a positive integer or False, got {save_freq!r}"
    if not isinstance(save_freq, int):
        raise ValueError(
            "BackupAndRestore: Invalid value for argument `save_freq`. "
            f"Received: save_freq={save_freq}. "
            f"Expected either 'epoch' or an integer value. (Here {ours}.)"
        )
    if isinstance(save_freq, bool) or save_freq <= 0:
        raise ValueError(f"BackupAndRestore: {ours}")


def _check_stateful_callbacks(callbacks, this):
    """None, or `callbacks` as a list of distinct callbacks that all have
    get_state() and set_state(state)."""
    if callbacks is None:
        return None
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(
        callbacks, (list, tuple)
    ):
        raise ValueError(
            "BackupAndRestore: stateful_callbacks must be a list of callbacks or None, "
            f"got {callbacks!r}"
        )
    for index, callback in enumerate(callbacks):
        if callback is this:
            raise ValueError("BackupAndRestore: stateful_callbacks cannot hold itself")
        if any(callback is other for other in callbacks[:index]):
            raise ValueError(
                f"BackupAndRestore: stateful_callbacks holds {callback!r} twice"
            )
        if not (
            callable(getattr(callback, "get_state", None))
            and callable(getattr(callback, "set_state", None))
        ):
            raise ValueError(
                f"BackupAndRestore: stateful_callbacks[{index}] ({type(callback).__name__}) "
                "has no get_state() and set_state(state), so it has no state to back up"
            )
    return list(callbacks)


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


def _assign(variables, arrays, part):
    for variable, value in zip(variables, snapshots.get_arrays(arrays, part, len(variables))):
        variable.assign(value)
