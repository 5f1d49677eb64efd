"""RunCallback: the wiring every kcallbacks callback shares.

Every kcallbacks callback derives from `RunCallback`. At train begin the
base, before the callback's own `begin_fit`:

1. settles which process writes the run (`sync_writer_role`): the model's
   distribution strategy may know this process's task better than the
   environment does;
2. finds the fit's other callbacks (`fit_callbacks`);
3. finds the run directory the callback records into (`run`): its own
   `run_dir`, else, for callbacks that only log events, that of another
   kcallbacks callback in the same fit.

A subclass implements `begin_fit(logs)` instead of overriding
`on_train_begin`, so none of the three can be forgotten, and records events
with `record_event`. Before any of the fit's kcallbacks callbacks writes,
the first one locks every directory they write (`writer_lock`: one writer
process per run directory); the last one unlocks them at train end. A
subclass implements `end_fit(logs)` instead of overriding `on_train_end`. When `BackupAndRestore` stops a fit mid-way for a
pre-emption signal, it calls `end_preempted` of every kcallbacks callback
of the fit in place of `on_train_end`.

The state protocol. A callback whose state should survive a restart has
`get_state()` and `set_state(state)`; `BackupAndRestore` saves and restores
the state of every callback in the fit that has both (kcallbacks' or the
user's), or of those named in its `stateful_callbacks`. `get_state()`
returns a dict of JSON-safe values, except that a field whose name ends in
`_weights` may hold a list of numpy arrays (stored beside the JSON, see
`snapshots`). `set_state(state)` puts the callback back where it was when
`get_state()` was called; it may be called before or after the callback's
`on_train_begin` in the resumed fit, and must survive it (see
`MonitorCallback`).
"""

import copy
import warnings

import keras

from kcallbacks import _jax, _keras_fit, _keras_tuner, _tensorflow, fit_sequence, writer_lock
from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import RunDirectoryError
from kcallbacks.writer_role import set_chief, writable_path


class RunCallback(keras.callbacks.Callback):
    """Base of the kcallbacks callbacks; see the module docstring.

    Args:
        run_dir: the run directory this callback writes or records events
            into; None: see `borrows_run_dir`.
    """

    # Whether a callback without a run_dir of its own records its events in
    # the run directory of another kcallbacks callback of the fit.
    borrows_run_dir = True

    def __new__(cls, *args, **kwargs):
        callback = super().__new__(cls)
        # What it was made with: a deep copy is made anew from it.
        callback._arguments = (args, kwargs)
        return callback

    def __deepcopy__(self, memo):
        """A new callback made with deep copies of this one's arguments.
        keras-tuner deep-copies the callbacks of `search()` for each trial;
        what a callback holds for a fit (threads, locks, the model) is not
        copied, nor is what it learned in one (its state)."""
        args, kwargs = copy.deepcopy(self._arguments, memo)
        return type(self)(*args, **kwargs)

    def __init__(self, run_dir=None):
        super().__init__()
        self.run_dir = None if run_dir is None else str(run_dir)
        # Set when a keras-tuner trial moved the callback into its own run.
        self.trial_directory = None
        self.run = None
        self.distribution = None
        self._fit_callbacks = None
        self._fit = None
        self._warned_no_siblings = False
        # The fit's BackupAndRestore whose snapshots hold this callback's
        # state (it sets this; see `snapshot_written`), or None.
        self._backed_up_by = None

    def on_train_begin(self, logs=None):
        self.distribution = sync_writer_role(self.model)
        found = _keras_fit.find_callback_list(self)
        if found is None:
            found = (self, [self])
            self._warn_no_siblings()
        self._fit, self._fit_callbacks = found
        if not any(c is self._backed_up_by for c in self._fit_callbacks):
            self._backed_up_by = None  # an earlier fit's
        _keras_tuner.place_in_trial(self._fit_callbacks)
        self._lock_written_directories()
        self.run = self._find_run_directory()
        self.begin_fit(logs)

    def begin_fit(self, logs=None):
        """What the callback does at train begin, once the wiring is done."""

    def on_train_end(self, logs=None):
        try:
            self.end_fit(logs)
        finally:
            if self._run_callbacks()[-1] is self:
                # The fit's last writer is done: other processes may write.
                writer_lock.release(self._fit)

    def end_fit(self, logs=None):
        """What the callback does at train end (its `on_train_end`)."""

    def written_directories(self):
        """[(directory, what it is)] for each directory of the run format
        this callback writes, which its process locks for the fit
        (`writer_lock`). Extend it for directories of your own."""
        if self.run_dir is None:
            return []
        return [(self.run_dir, "run directory")]

    def _run_callbacks(self):
        return [c for c in self.fit_callbacks if isinstance(c, RunCallback)]

    def _lock_written_directories(self):
        """The fit's first kcallbacks callback locks every directory that
        any of them writes, before any of them writes: a second process
        is refused before it changes anything."""
        ours = self._run_callbacks()
        if ours[0] is not self:
            return
        try:
            for callback in ours:
                for directory, what in callback.written_directories():
                    writer_lock.acquire(writable_path(directory), self._fit, what)
        except RunDirectoryError:
            writer_lock.release(self._fit)
            raise

    def move_into_trial(self, rebase):
        """Moves every path the callback writes into a keras-tuner trial's
        run: `rebase(path, is_file=False)` gives the path's place there (see
        `_keras_tuner.place_in_trial`). Extend it for paths of your own."""
        if self.run_dir is not None:
            self.run_dir = rebase(self.run_dir)

    def snapshot_written(self):
        """Called by the fit's BackupAndRestore, in its writer thread, once a
        snapshot holding this callback's `get_state()` is complete on disk:
        what only that state still needed may go now."""

    def end_preempted(self, preemption):
        """The fit stops here, before its end, because the process was asked
        to (its state is saved): write out what is pending and let go of
        what the fit held. `preemption` holds the `preempted` event's fields
        (signal, epoch, batch, step)."""

    @property
    def fit_callbacks(self):
        """The callbacks of the current fit, in list order (from train begin)."""
        return self._fit_callbacks or [self]

    @property
    def run_position(self):
        """Where the run stands in this process (`fit_sequence.RunPosition`),
        or None without a run directory. Known before train begin too (a
        restore may set it first)."""
        if self.run is not None:
            return fit_sequence.position(self.run.path, self.model)
        if self.run_dir is not None:
            return fit_sequence.position(writable_path(self.run_dir), self.model)
        return None

    def run_epoch(self, epoch):
        """The run's number for Keras' `epoch` of this fit: the same in a
        program's first fit, counted on across its later fits (see
        `fit_sequence`). Call it from the fit's first epoch on."""
        position = self.run_position
        if position is None:
            return epoch
        return epoch + position.epoch_offset(self._fit, epoch)

    def record_event(self, event_type, **fields):
        """Appends an event to the run directory's event log, if there is
        one. Epochs in events are the run's (`run_epoch`)."""
        if self.run is not None:
            self.run.append_event(event_type, **fields)

    def _find_run_directory(self):
        candidates = [self]
        if self.borrows_run_dir:
            candidates += [c for c in self.fit_callbacks if c is not self]
        for candidate in candidates:
            if isinstance(candidate, RunCallback) and candidate.run_dir is not None:
                return RunDirectory(candidate.run_dir, create=True)
        return None

    def _what_needs_siblings(self):
        """What this callback loses when it cannot see the fit's other
        callbacks, or None when it needs nothing from them."""
        if self.run_dir is None and self.borrows_run_dir:
            return "its events are not recorded in another callback's run directory"
        return None

    def _warn_no_siblings(self):
        loss = self._what_needs_siblings()
        if loss is None or self._warned_no_siblings:
            return
        self._warned_no_siblings = True
        warnings.warn(
            f"{type(self).__name__}: on_train_begin was not called by Keras' "
            f"CallbackList, so the fit's other callbacks are unknown: {loss}",
            stacklevel=3,
        )


def sync_writer_role(model):
    """Settles which process writes the run and returns the distribution
    summary for the manifest. Under JAX with several processes
    (`jax.distributed`), process 0 writes; under a TensorFlow strategy whose
    cluster resolver knows the task, the chief (or worker 0 without one);
    otherwise TF_CONFIG decides (see `writer_role.is_chief`)."""
    info = _tensorflow.distribution(model) or keras_distribution()
    if "task_type" in info:
        task_type, task_id = info["task_type"], info["task_id"]
        set_chief(
            task_type == "chief"
            or (task_type == "worker" and task_id == 0 and not info["has_chief"])
        )
    elif info.get("workers", 1) > 1 and "process" in info:
        set_chief(info["process"] == 0)
    return info


def keras_distribution():
    """The distribution summary under `keras.distribution` (the JAX way):
    its class and device count, or one device without one."""
    distribution = keras.distribution.distribution()
    processes = {"workers": _jax.process_count(), "process": _jax.process_index()}
    if distribution is None:
        return {"strategy": None, "replicas": 1, **processes}
    mesh = distribution.device_mesh
    return {
        "strategy": type(distribution).__name__,
        "replicas": int(mesh.devices.size),
        "mesh": dict(zip(mesh.axis_names, (int(n) for n in mesh.shape))),
        **processes,
    }
