"""The run directory's names: files, columns, event types, schema version.

The one place these spellings live. Both the callbacks (through the modules
that write and read run directories) and the `kreport` CLI import them from
here; nothing in this module imports Keras, pandas or a framework. The
format itself is documented in `docs/run-format.md`.
"""

import datetime

import numpy as np

SCHEMA_VERSION = 1

# Files and directories of a run directory.
MANIFEST = "run.json"
HISTORY_JSONL = "history.jsonl"
HISTORY_CSV = "history.csv"
EVENTS_JSONL = "events.jsonl"
BATCHES_BIN = "batches.bin"
BATCHES_SCHEMA = "batches.json"
CHECKPOINTS_DIR = "checkpoints"
BACKUP_DIR = "backup"
# Beside ModelCheckpoint's files when it keeps the N best (`max_to_keep`).
CHECKPOINT_INDEX = "checkpoints.json"
# In every directory a process writes (run, backup, checkpoints): the lock
# it holds while its fit runs, naming the holder (`writer_lock`).
WRITER_LOCK = ".writer.lock"
# Temporary files of atomic writes: `.NAME.tmp-XXXXXXXX` (+ a suffix).
TEMPORARY_MARK = ".tmp-"

# Inside a backup directory: one directory per snapshot.
SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_STATE = "state.json"
SNAPSHOT_ARRAYS = "arrays.bin"
SNAPSHOT_ARRAYS_NPZ = "arrays.npz"  # snapshot formats 1 and 2

# Columns that lead every history row, in this order; metric columns follow,
# then the trailing ones.
HISTORY_LEADING_COLUMNS = ("epoch",)
HISTORY_TRAILING_COLUMNS = ("learning_rate", "wall_time", "epoch_time")
# History columns that are not metrics.
HISTORY_NON_METRIC_COLUMNS = HISTORY_LEADING_COLUMNS + HISTORY_TRAILING_COLUMNS

# Leading fields of every per-batch record; named metrics follow as float32.
BATCH_FIELDS = (
    ("step", "<i8"),
    ("epoch", "<i4"),
    ("batch", "<i4"),
    ("size", "<i4"),
    ("loss", "<f4"),
)
# The per-batch fields that place a record, as opposed to measuring it.
BATCH_POSITION_FIELDS = ("step", "epoch", "batch", "size")


class Event:
    """The `type` of each record of `events.jsonl`."""

    CHECKPOINT_SAVED = "checkpoint_saved"
    CHECKPOINT_DELETED = "checkpoint_deleted"
    LR_REDUCED = "lr_reduced"
    EARLY_STOP = "early_stop"
    NON_FINITE = "non_finite"
    RESUMED = "resumed"
    RESUME_SKIPPED = "resume_skipped"
    HISTORY_TRUNCATED = "history_truncated"
    BATCHES_TRUNCATED = "batches_truncated"
    PREEMPTED = "preempted"

    # Events about the attempts themselves, kept when a restore rolls back
    # the events of the training it undoes.
    ATTEMPTS = (RESUMED, RESUME_SKIPPED, HISTORY_TRUNCATED, BATCHES_TRUNCATED, PREEMPTED)


class RunDirectoryError(ValueError):
    """A path is not a run directory, or a run file cannot be understood."""


def batch_record_dtype(metric_names=()):
    """The numpy dtype of one per-batch record with these named metrics."""
    return np.dtype(list(BATCH_FIELDS) + [(name, "<f4") for name in metric_names])


def utc_now():
    """The current time as an ISO 8601 string in UTC, to the millisecond."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds")
