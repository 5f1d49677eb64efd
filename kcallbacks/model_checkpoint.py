"""ModelCheckpoint: save the model or its weights during a fit, atomically,
keeping the N best, optionally writing in the background."""

import functools
import math
import os
import re
import string
import warnings

import keras

from kcallbacks import _keras_fit, fit_sequence
from kcallbacks._keras_fit import print_msg
from kcallbacks._keras_saving import WeightsSnapshot, legacy_weights_image
from kcallbacks.arguments import as_float, check_integer
from kcallbacks.background import BackgroundWriter
from kcallbacks.durable_io import (
    atomic_file,
    atomic_link,
    atomic_write_bytes,
    make_writable_directory,
    remove_file,
    remove_stale_temporaries,
)
from kcallbacks.fit_context import global_step
from kcallbacks.monitor import MonitorCallback, json_value, keras3_metric_name
from kcallbacks.run_directory import write_checkpoint_index
from kcallbacks.run_format import CHECKPOINT_INDEX, Event
from kcallbacks.writer_role import is_chief

WEIGHTS_SUFFIX = ".weights.h5"
MODEL_SUFFIX = ".keras"
LEGACY_SUFFIXES = (".h5", ".hdf5")  # Keras 2's HDF5 formats
BEST_NAME = "best"


def _template_fields(template):
    """The names a format template uses: `{val_loss:.4f}` gives `val_loss`."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.append(re.split(r"[.\[]", field, maxsplit=1)[0])
    return names


def _template_regex(template):
    """A regex matching the names `template` can format to."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(".*")
    return re.compile("".join(parts) + r"\Z")


class ModelCheckpoint(MonitorCallback):
    """Saves the model or its weights during a fit, atomically.

    Keras' `ModelCheckpoint`, with the same arguments, semantics and
    attributes (`filepath`, `best`, `save_freq`, ...), and:

    - **The filename template is checked before training.** At train begin,
      every `{key}` in `filepath` is checked against the keys this fit's logs
      will hold: `epoch`, the loss and compiled metrics, their `val_` forms
      when the fit has validation data, `batch` when `save_freq` is an
      integer, and `learning_rate` after a `ReduceLROnPlateau` or
      `LearningRateScheduler`. An unknown key is a ValueError naming the
      available ones. (Keras raises a KeyError after the first epoch.) For a
      model whose metric names only its first step reveals (a custom
      `train_step`, a multi-output model on TensorFlow), the check runs at
      the end of the first batch.
    - **Atomic writes.** Each checkpoint is written to a temporary file
      beside its final name (`.NAME.tmp-XXXXXXXX`, plus `.keras` for whole
      models), fsynced, and renamed over it: a crash, even a SIGKILL, never
      leaves a partial file under a final name. Temporary files a killed run
      left behind are removed at the next train begin. If a write fails
      (disk full, no permission) the earlier checkpoints are untouched and
      the OSError says which file could not be written. A directory that
      cannot be written is an error at train begin. A `.weights.h5` file is
      built in memory by Keras' own saving code (what `save_weights` runs),
      then written with plain file I/O: HDF5 writing to a full disk itself
      can crash the process (h5py issue 914). The host copy of the
      variables and the file's image are kept in memory for the fit (about
      twice the size of the weights and optimizer state) and reused by
      every save: filling memory that is already mapped is several times
      faster than allocating it afresh.
    - **`max_to_keep=N`** keeps the N best checkpoints by the monitored
      value (ties and missing values: the most recent first) and deletes the
      others; a save that would not be among the N best is not written. The
      directory then holds `best.weights.h5` (`best.keras`, `best.h5` for
      whole models), a hard link to (or copy of) the best checkpoint, and
      `checkpoints.json`, an index of the kept files with their epoch, step
      and monitored value. Both are replaced atomically, after the file they
      name is complete.
    - **`async_save=True`** (weights only) copies the weights and optimizer
      variables to host memory on the training thread, then writes the file
      in a background thread while training goes on. At most one save is in
      flight (the next save waits for it), a failed background write is
      raised at the next save or at train end, and all writes are finished
      when `on_train_end` returns. It holds one extra host copy of the
      weights and optimizer state, allocated at the first save of the
      callback (which therefore takes about as long as a synchronous copy).
    - **Events.** When the fit has a run directory, each save is recorded as
      a `checkpoint_saved` event (`epoch`, `step`, `path`, `monitor`,
      `value`, `best`) and each deletion as `checkpoint_deleted` (`path`).
      With `BackupAndRestore` in the fit, an evicted file is deleted only
      once a backup snapshot that no longer lists it is complete, so a run
      killed in between resumes with the checkpoints its state names.
    - **Epochs without validation** (`fit(validation_freq=N)`) are passed
      over when the filepath names a `val_` key or the best is judged by a
      `val_` monitor: nothing to name the file or rank it by, so no save
      and no change to `best`. (Keras' ModelCheckpoint raises a KeyError
      filling the filepath at the first such epoch.)
    - **Several fits of one model into one run** (fine-tuning phases, a
      loop of `fit(epochs=1)`): `{epoch}` is the run's epoch, so a later
      fit's files are named on from the earlier ones' (Keras starts each
      fit at its `initial_epoch` and would reuse the names). In a
      program's first fit the two are the same.
    - **keras-tuner**: in a trial's fit, the file goes into the trial's own
      directory (`ckpt/trial_03/...`, or under the trial's run directory
      when the filepath lies in a kcallbacks run directory).
    - **NaN** is never an improvement, so with `save_best_only` a NaN epoch
      is not saved (in Keras a NaN first value is saved and then nothing
      ever beats it).
    - `best` follows the monitored value even when `save_best_only` is
      False (Keras updates it only with `save_best_only`), so events say
      which save was the best so far.
    - `get_state()` / `set_state(state)` save and restore `best`, the kept
      checkpoints, the epoch counter of `period` and the batch counters of
      an integer `save_freq`.
    - **Keras 2 spellings** do what they did, each with one warning naming
      the Keras 3 spelling: `period=N` saves every N epochs; a filepath
      without a Keras 3 suffix gets one (`.keras`, or `.weights.h5` with
      `save_weights_only`); `.h5` / `.hdf5` with `save_weights_only` writes
      Keras 2's HDF5 weights under that name (what `model.load_weights`
      reads for those names); `.hdf5` without it saves the whole model in
      the legacy HDF5 format, as `.h5` does; `{acc}` / `{val_acc}` in the
      filepath and `monitor="acc"` / `"val_acc"` take `accuracy` /
      `val_accuracy` when the logs have only those.

    Bad arguments are a ValueError at construction: a `save_freq` that is
    neither `"epoch"` nor a positive integer (for a value Keras rejects,
    with Keras' message first), a `period` that is not a positive integer
    or comes with an integer `save_freq`, an unknown `mode`, a `.keras`
    filepath with `save_weights_only`, a `max_to_keep` that is not a
    positive integer or whose filepath has fields in its directory part,
    `async_save` unless `save_weights_only` with a `.weights.h5` filepath.

    Args:
        filepath: path of the checkpoint file, a format template filled with
            `epoch` (1-based, as in Keras), `batch` (1-based, with an integer
            `save_freq`) and the keys of the logs, e.g.
            `"ckpt/{epoch:02d}-{val_loss:.4f}.weights.h5"`. It ends in
            `.weights.h5` with `save_weights_only=True`, else in `.keras`
            (or `.h5`, Keras' legacy format); Keras 2's names are mapped as
            above, and `filepath` then holds the name written.
        monitor: the logs key that decides which checkpoint is best
            (Keras 2's `"acc"` / `"val_acc"`: see `MonitorCallback`).
        verbose: 0 is silent; 1 prints a message at each save.
        save_best_only: save only when the monitored value improves on
            `best`.
        save_weights_only: save `model.save_weights(...)` instead of
            `model.save(...)`.
        mode: `"auto"`, `"min"` or `"max"`, as in `EarlyStopping`.
        save_freq: `"epoch"` (save at each epoch end) or an integer N (save
            every N batches).
        initial_value_threshold: the initial `best`: with `save_best_only`,
            only a value that beats it is saved.
        max_to_keep: keep only the N best checkpoints (None: keep all).
        async_save: write the files in a background thread.
        run_dir: the run directory for events; None: that of another
            kcallbacks callback in the fit (a `HistoryLogger`), if any.
        period: Keras 2's argument (keyword only): consider saving every
            `period` epochs (with `save_best_only`, the best is checked only
            then), counting epochs since the last time; None: every epoch.
            Needs `save_freq="epoch"`.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(256, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    checkpoint = kcallbacks.ModelCheckpoint(
        "ckpt/{epoch:02d}-{val_loss:.4f}.weights.h5",
        save_weights_only=True, max_to_keep=2, async_save=True,
    )
    model.fit(x, y, validation_split=0.25, epochs=5, verbose=0, callbacks=[checkpoint])
    model.load_weights("ckpt/best.weights.h5")
    ```
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
        max_to_keep=None,
        async_save=False,
        run_dir=None,
        *,
        period=None,
    ):
        super().__init__(monitor, mode, initial_value_threshold, run_dir=run_dir)
        self.verbose = verbose
        self.filepath = os.fspath(filepath)
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self.initial_value_threshold = initial_value_threshold
        self.max_to_keep = max_to_keep
        self.async_save = async_save
        self.period = period
        self.kept_checkpoints = []
        self._epochs_since_last_save = 0
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None
        self._current_epoch = 0
        self._template_checked = False
        self._rate_in_logs = False
        self._saver = BackgroundWriter("kcallbacks-checkpoint")
        self._snapshot = WeightsSnapshot()
        self._noted_fields = set()  # Keras 2 filepath fields already warned about
        # Evicted checkpoints whose files wait for a backup snapshot that no
        # longer lists them (see `_evict`): not yet in a state / in the
        # state being written.
        self._evicted_since_state = []
        self._evicted_in_state = []
        # Warned only once every argument is known to be good.
        for note in self._validate_arguments():
            warnings.warn(note, stacklevel=2)

    def _validate_arguments(self):
        """Checks the arguments and maps Keras 2's spellings; returns the
        messages saying what was mapped."""
        notes = []
        freq = self.save_freq
        expected = (
            "save_freq must be 'epoch' or a positive integer (a number of "
            f"batches), got {freq!r}"
        )
        if freq != "epoch" and not isinstance(freq, int):
            # Keras' own message first, for code that matches on it.
            raise ValueError(
                f"ModelCheckpoint: Unrecognized save_freq: {freq}. Expected "
                f"save_freq are 'epoch' or integer values; {expected}"
            )
        if freq != "epoch" and (isinstance(freq, bool) or freq < 1):
            raise ValueError(f"ModelCheckpoint: {expected}")
        if self.period is not None:
            check_integer("ModelCheckpoint", "period", self.period, minimum=1)
            if freq != "epoch":
                raise ValueError(
                    "ModelCheckpoint: period (Keras 2's epochs between saves) "
                    f"cannot be combined with save_freq={freq!r} (batches "
                    "between saves); pass only one"
                )
            every = "every epoch" if self.period == 1 else f"every {self.period} epochs"
            notes.append(
                "ModelCheckpoint: `period` is Keras 2's argument, gone in Keras 3 "
                f"(whose save_freq=N counts batches); saving {every} as asked"
            )
        notes += self._map_filepath()
        if self.async_save and not self.save_weights_only:
            raise ValueError("ModelCheckpoint: async_save=True needs save_weights_only=True")
        if self.async_save and self._suffix != WEIGHTS_SUFFIX:
            raise ValueError(
                "ModelCheckpoint: async_save=True writes Keras 3 weights; end the "
                f"filepath in `.weights.h5`, got {self.filepath!r}"
            )
        if self.max_to_keep is not None:
            check_integer("ModelCheckpoint", "max_to_keep", self.max_to_keep, minimum=1)
            if "{" in os.path.dirname(self.filepath):
                raise ValueError(
                    "ModelCheckpoint: with max_to_keep the checkpoints share one "
                    "directory, so the filepath's directory cannot have fields: "
                    f"{self.filepath!r}"
                )
            if os.path.basename(self.filepath) == self._best_name:
                raise ValueError(
                    f"ModelCheckpoint: with max_to_keep, {self._best_name} names "
                    "the best checkpoint; choose another filepath"
                )
        return notes

    def _map_filepath(self):
        """Sets `_suffix` (the checkpoint format) from the filepath, giving
        a Keras 2 filepath the name Keras 3 needs; returns the messages
        saying so."""
        path = self.filepath
        if self.save_weights_only:
            if path.endswith(WEIGHTS_SUFFIX):
                self._suffix = WEIGHTS_SUFFIX
                return []
            if path.endswith(MODEL_SUFFIX):
                raise ValueError(
                    "ModelCheckpoint: When using `save_weights_only=True` in "
                    "`ModelCheckpoint`, the filepath provided must end in "
                    "`.weights.h5` (Keras weights format). Received: "
                    f"filepath={path}"
                )
            if path.endswith(LEGACY_SUFFIXES):
                self._suffix = os.path.splitext(path)[1]
                return [
                    f"ModelCheckpoint: save_weights_only=True with filepath {path!r} "
                    "is Keras 2's spelling (Keras 3's ends in `.weights.h5`); writing "
                    "Keras 2's HDF5 weights under that name, which model.load_weights reads"
                ]
            self._suffix = WEIGHTS_SUFFIX
            self.filepath = path + WEIGHTS_SUFFIX
            return [
                f"ModelCheckpoint: filepath {path!r} lacks the `.weights.h5` suffix "
                "Keras 3 needs for weights (Keras 2 wrote a TensorFlow checkpoint "
                f"there); saving to {self.filepath!r}"
            ]
        if path.endswith((MODEL_SUFFIX, ".h5")):
            self._suffix = os.path.splitext(path)[1]
            return []
        if path.endswith(".hdf5"):
            self._suffix = ".hdf5"
            return [
                f"ModelCheckpoint: filepath {path!r} is Keras 2's spelling (Keras 3's "
                "ends in `.keras`, or `.h5` for this legacy format); saving the "
                "model in the legacy HDF5 format under that name"
            ]
        self._suffix = MODEL_SUFFIX
        self.filepath = path + MODEL_SUFFIX
        return [
            f"ModelCheckpoint: filepath {path!r} lacks the `.keras` suffix Keras 3 "
            "needs for a model (Keras 2 wrote a SavedModel there); saving the "
            f"Keras 3 format to {self.filepath!r}"
        ]

    @property
    def _best_name(self):
        return BEST_NAME + self._suffix

    @property
    def directory(self):
        """The checkpoints' directory, when the filepath fixes it."""
        directory = os.path.dirname(self.filepath)
        return None if "{" in directory else os.path.abspath(directory or ".")

    @property
    def best_path(self):
        """With `max_to_keep`: the stable name of the best checkpoint."""
        if self.max_to_keep is None:
            return None
        return os.path.join(self.directory, self._best_name)

    def move_into_trial(self, rebase):
        super().move_into_trial(rebase)
        self.filepath = rebase(self.filepath, is_file=True)

    def written_directories(self):
        found = super().written_directories()
        # The checkpoints of a run are the run writer's, wherever they go. A
        # ModelCheckpoint in a fit without a run directory is Keras' drop-in
        # and leaves the directory as Keras would.
        in_a_run = any(c.run_dir is not None for c in self._run_callbacks())
        if self.directory is not None and in_a_run:
            found.append((self.directory, "checkpoint directory"))
        return found

    # fit hooks

    def begin_fit(self, logs=None):
        # A background write left by an interrupted fit in this process
        # ends before this fit cleans up temporary files.
        self._saver.finish_leftover()
        super().begin_fit(logs)
        self._rate_in_logs = self._rate_logged_before_us(self.fit_callbacks)
        self._template_checked = False
        keys = _keras_fit.training_log_keys(self.model)
        if keys is not None:
            self._check_template(keys)
        if self.directory is not None:
            try:
                make_writable_directory(self.directory)
            except OSError as error:
                raise OSError(
                    error.errno,
                    f"ModelCheckpoint: cannot write checkpoints to {self.directory}: "
                    f"{error.strerror or error}",
                ) from None
            pattern = _template_regex(os.path.basename(self.filepath))
            ours = {self._best_name, CHECKPOINT_INDEX}
            remove_stale_temporaries(
                self.directory, lambda name: name in ours or bool(pattern.match(name))
            )

    def _rate_logged_before_us(self, callbacks):
        from kcallbacks.reduce_lr_on_plateau import ReduceLROnPlateau

        writers = (ReduceLROnPlateau, keras.callbacks.ReduceLROnPlateau,
                   keras.callbacks.LearningRateScheduler)
        for callback in callbacks:
            if callback is self:
                return False
            if isinstance(callback, writers):
                return True
        return False

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not self._template_checked:
            self._check_template([k for k in (logs or {}) if k not in ("batch", "size")])
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        if self.save_freq == "epoch" and self._period_elapsed():
            self._save_model(epoch, None, logs)

    def _period_elapsed(self):
        """Whether this epoch end saves, given `period`: as in Keras 2, the
        epochs are counted since the last time saving was considered."""
        if self.period is None:
            return True
        self._epochs_since_last_save += 1
        if self._epochs_since_last_save < self.period:
            return False
        self._epochs_since_last_save = 0
        return True

    def end_fit(self, logs=None):
        super().end_fit(logs)
        self._finish_saving()

    def end_preempted(self, preemption):
        self._finish_saving()

    def _finish_saving(self):
        """Waits for the save in flight; the host memory is not kept between fits."""
        self._saver.wait()
        self._snapshot = WeightsSnapshot()

    # the filename template

    def _check_template(self, training_keys):
        self._template_checked = True
        by_batch = self.save_freq != "epoch"
        available = {"epoch", *training_keys}
        if by_batch:
            available.add("batch")
        else:
            if self._validates is not False:
                available.update(f"val_{key}" for key in training_keys)
            if self._rate_in_logs:
                available.add("learning_rate")
        fields = _template_fields(self.filepath)
        for name in fields:
            if name in available:
                continue
            modern = keras3_metric_name(name, available)
            if modern is not None:
                self._note_keras2_field(name, modern)
                continue
            if not by_batch and self._validates is None and name.startswith("val_"):
                continue  # not called from a fit we can see: cannot tell
            raise ValueError(
                f"ModelCheckpoint: filepath {self.filepath!r} uses {{{name}}}, "
                f"which this fit's logs will not have{self._why_missing(name)}. "
                f"Available: {', '.join(sorted(available))}"
            )
        sample = {key: 1 if key in ("epoch", "batch") else 0.5 for key in [*available, *fields]}
        try:
            self.filepath.format(**sample)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
            raise ValueError(
                f"ModelCheckpoint: filepath {self.filepath!r} is not a valid "
                f"format template: {error}"
            ) from None

    def _why_missing(self, name):
        if name == "batch":
            return " (batch needs an integer save_freq)"
        if name.startswith("val_") and self.save_freq != "epoch":
            return " (batch-level logs have no val_ keys)"
        if name.startswith("val_") and self._validates is False:
            return " (this fit has no validation data)"
        return ""

    def _note_keras2_field(self, name, modern):
        if name in self._noted_fields:
            return
        self._noted_fields.add(name)
        warnings.warn(
            f"ModelCheckpoint: filepath field {{{name}}} is Keras 2's name; this "
            f"fit logs {modern!r} (Keras 3), filling it with that",
            stacklevel=4,
        )

    def _file_path(self, epoch, batch, logs):
        values = dict(logs or {})
        for name in _template_fields(self.filepath):
            modern = keras3_metric_name(name, values)
            if modern is not None:
                self._note_keras2_field(name, modern)
                values[name] = values[modern]
        values["epoch"] = epoch + 1
        if batch is not None:
            values.setdefault("batch", batch + 1)
        try:
            return self.filepath.format(**values)
        except (KeyError, IndexError) as error:
            raise ValueError(
                f"ModelCheckpoint: cannot fill filepath {self.filepath!r}: the "
                f"logs have no {error}. Available: {', '.join(sorted(values))}"
            ) from None

    # when to save

    def _should_save_on_batch(self, batch):
        # As Keras, including models compiled with steps_per_execution > 1.
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            add_batches = batch + 1  # a new epoch
        else:
            add_batches = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add_batches
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _monitored_value(self, logs):
        self._resolve_monitor(logs or {})
        if self.save_best_only or self.max_to_keep is not None:
            return self.get_monitor_value(logs)  # warns when missing
        return as_float((logs or {}).get(self.monitor))

    def _save_model(self, epoch, batch, logs):
        if batch is None and self.unvalidated_epoch(logs) and (
            any(name.startswith("val_") for name in _template_fields(self.filepath))
            or (self.monitor.startswith("val_") and (self.save_best_only or self.max_to_keep))
        ):
            # fit(validation_freq=N): nothing to name the file or rank it by
            # this epoch; the next validated epoch decides.
            return
        if self.monitor_op is None:
            self._set_monitor_op()
        current = self._monitored_value(logs)
        improved = self._is_improvement(current, self.best)
        best_text = "None" if self.best is None else f"{self.best:.5f}"
        if self.save_best_only and current is not None and not improved:
            if self.verbose > 0:
                print_msg(
                    f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best_text}"
                )
            return
        # A later fit of the program names its files by the run's epochs
        # (Keras would start again at 01): see `RunCallback.run_epoch`.
        epoch = self.run_epoch(epoch)
        path = os.path.abspath(self._file_path(epoch, batch, logs))
        entry = {
            "name": os.path.basename(path),
            "epoch": epoch,
            "batch": batch,
            "step": global_step(self.model),
            "value": json_value(current),
        }
        kept, evicted = self.kept_checkpoints, []
        if self.max_to_keep is not None:
            ranked = self._rank_with(entry)
            if ranked is None:
                if self.verbose > 0:
                    print_msg(
                        f"\nEpoch {epoch + 1}: {self.monitor}={current} is not "
                        f"among the {self.max_to_keep} best; not saved"
                    )
                return
            kept, evicted = ranked
        if self.verbose > 0:
            if improved and self.save_best_only:
                print_msg(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {best_text} "
                    f"to {current:.5f}, saving model to {path}"
                )
            else:
                print_msg(f"\nEpoch {epoch + 1}: saving model to {path}")

        if self.async_save:
            self._saver.wait()  # one save in flight; its buffers are reused
            self._snapshot.take(self.model)
            contents = self._snapshot.image
        elif self.save_weights_only and self._suffix == WEIGHTS_SUFFIX:
            # Written before training goes on: built from the variables
            # themselves, with no host copies first.
            contents = functools.partial(self._snapshot.image_now, self.model)
        elif self.save_weights_only:
            contents = functools.partial(legacy_weights_image, self.model)
        else:
            contents = None  # model.save writes the file

        def job():
            self._write(path, contents)
            self._after_write(path, entry, kept, evicted, improved)

        def commit():
            if improved:
                self.best = current
            self.kept_checkpoints = kept

        if self.async_save:
            commit()
            self._saver.submit(job)
        else:
            job()
            commit()  # only once the file is there

    def _rank_key(self, entry):
        quality, value = self._better_first_key(entry["value"])
        batch = math.inf if entry["batch"] is None else entry["batch"]
        return (quality, value, -entry["epoch"], -batch)

    def _rank_with(self, entry):
        """(kept, evicted) if `entry` is among the `max_to_keep` best with
        the kept checkpoints, else None. An entry with the same name as a
        kept one replaces it only if it ranks better."""
        same = [e for e in self.kept_checkpoints if e["name"] == entry["name"]]
        if same and self._rank_key(same[0]) <= self._rank_key(entry):
            return None
        others = [e for e in self.kept_checkpoints if e["name"] != entry["name"]]
        ranked = sorted(others + [entry], key=self._rank_key)
        kept, evicted = ranked[: self.max_to_keep], ranked[self.max_to_keep:]
        if entry not in kept:
            return None
        return kept, evicted

    # writing

    def _write(self, path, contents):
        """Writes `contents()` (bytes) to `path`, or with `model.save` when
        `contents` is None, atomically; a failure leaves earlier files as
        they were and says so."""
        try:
            if contents is None:
                save = functools.partial(self.model.save, overwrite=True)
                atomic_file(path, save, suffix=self._suffix)
            else:
                atomic_write_bytes(path, contents())
        except OSError as error:
            raise OSError(
                error.errno,
                f"ModelCheckpoint: could not write {path}: {error.strerror or error}. "
                "Earlier checkpoints are intact.",
            ) from error

    def _after_write(self, path, entry, kept, evicted, improved):
        """Runs once `path` is complete: best pointer, index, deletions, events."""
        if self.max_to_keep is not None:
            if kept[0] is entry:
                atomic_link(path, self.best_path)
            write_checkpoint_index(self.directory, self._index(kept))
        self.record_event(
            Event.CHECKPOINT_SAVED,
            epoch=entry["epoch"],
            step=entry["step"],
            path=self._event_path(path),
            monitor=self.monitor,
            value=entry["value"],
            best=bool(improved),
        )
        for old in evicted:
            self._evict(old["name"], entry["epoch"])
        if self.verbose > 0:
            print_msg(f"\nEpoch {entry['epoch'] + 1}: finished saving model to {path}")

    def _evict(self, name, epoch):
        """Deletes an evicted checkpoint. When a backup snapshot holds this
        callback's state, the file goes only once a snapshot that no longer
        lists it is complete: a kill before that resumes from a state that
        still keeps it. The event is recorded now, so that the snapshot's
        event log holds it too."""
        path = os.path.join(self.directory, name)
        self.record_event(Event.CHECKPOINT_DELETED, path=self._event_path(path), epoch=epoch)
        if self._backed_up_by is None:
            remove_file(path)
        else:
            self._evicted_since_state.append(name)

    def snapshot_written(self):
        evicted, self._evicted_in_state = self._evicted_in_state, []
        self._remove_evicted(evicted, self.kept_checkpoints)

    def _remove_evicted(self, names, kept):
        # A later save may have reused an evicted name (a template without
        # {epoch}): that file is kept.
        kept_names = {e["name"] for e in kept}
        if self.directory is not None:
            for name in names:
                if name not in kept_names:
                    remove_file(os.path.join(self.directory, name))

    def _event_path(self, path):
        return self.run.relative_path(path) if self.run is not None else path

    def _index(self, kept):
        return {
            "monitor": self.monitor,
            "mode": "max" if self._maximizing else "min",
            "best": kept[0]["name"],
            "best_path": self._best_name,
            "checkpoints": [
                {k: e[k] for k in ("name", "epoch", "batch", "step", "value")} for e in kept
            ],
        }

    # state

    def _own_state(self):
        """The state (waits for a background save first, so the kept
        checkpoints it lists are complete files)."""
        self._saver.wait()
        self._evicted_in_state += self._evicted_since_state
        self._evicted_since_state = []
        return {
            "best": json_value(self.best),
            "checkpoints": [dict(e) for e in self.kept_checkpoints],
            "evicted": list(self._evicted_in_state),
            "epochs_since_last_save": self._epochs_since_last_save,
            "batches_seen_since_last_saving": self._batches_seen_since_last_saving,
            "last_batch_seen": self._last_batch_seen,
        }

    def _apply_state(self, state):
        self._saver.wait()
        self.best = json_value(state["best"])
        directory = self.directory
        self._evicted_since_state, self._evicted_in_state = [], []
        if is_chief():
            # Evicted as of the state, but the kill came before they went.
            self._remove_evicted(state.get("evicted", []), state.get("checkpoints", []))
        # A checkpoint whose file is gone (deleted, or never finished before
        # a crash) is not kept.
        self.kept_checkpoints = [
            dict(e) for e in state.get("checkpoints", [])
            if directory is not None and os.path.exists(os.path.join(directory, e["name"]))
        ]
        # Absent from states saved before `period` was accepted.
        self._epochs_since_last_save = int(state.get("epochs_since_last_save", 0))
        self._batches_seen_since_last_saving = int(state["batches_seen_since_last_saving"])
        last = state["last_batch_seen"]
        self._last_batch_seen = None if last is None else int(last)
        if (self.max_to_keep is not None and directory is not None
                and not fit_sequence.later_fits_follow()):
            self._forget_rolled_back_saves(directory)

    def _forget_rolled_back_saves(self, directory):
        """After a restore: checkpoints saved after the snapshot belong to
        training that was rolled back. With `max_to_keep`, this callback owns
        the files its template names there, so those go, and the best
        pointer and index name the restored best again. Only the process
        that writes the run has files there (the others' saves went to
        their scratch directories, gone with those processes)."""
        if not is_chief() or not os.path.isdir(directory):
            return
        kept = {e["name"] for e in self.kept_checkpoints}
        pattern = _template_regex(os.path.basename(self.filepath))
        for name in os.listdir(directory):
            if pattern.match(name) and name not in kept and name != self._best_name:
                remove_file(os.path.join(directory, name))
        if self.kept_checkpoints:
            atomic_link(os.path.join(directory, self.kept_checkpoints[0]["name"]), self.best_path)
            write_checkpoint_index(directory, self._index(self.kept_checkpoints))
        else:
            remove_file(self.best_path)
            remove_file(os.path.join(directory, CHECKPOINT_INDEX))
