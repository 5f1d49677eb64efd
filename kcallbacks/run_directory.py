"""The run directory's on-disk format: the one place that reads and writes it.

Callbacks and the `kreport` CLI go through this module; nothing else opens run
files by hand. It imports neither Keras nor TensorFlow, so the CLI can use it.
The format is documented in `docs/run-format.md`.

Durability rules:
- whole files (the manifest, rewritten tables) are replaced atomically: write a
  temporary file beside the target, fsync it, rename it over the target, fsync
  the directory;
- logs are appended, then flushed and fsynced before the call returns;
- readers tolerate a torn last line or record, which is what a crash in the
  middle of an append leaves behind.
"""

import atexit
import contextlib
import csv
import datetime
import io
import json
import os
import shutil
import tempfile
import uuid

import numpy as np

SCHEMA_VERSION = 1

MANIFEST = "run.json"
HISTORY_JSONL = "history.jsonl"
HISTORY_CSV = "history.csv"
EVENTS_JSONL = "events.jsonl"
BATCHES_BIN = "batches.bin"
BATCHES_SCHEMA = "batches.json"
CHECKPOINTS_DIR = "checkpoints"
# Beside ModelCheckpoint's files when it keeps the N best (`max_to_keep`).
CHECKPOINT_INDEX = "checkpoints.json"
# Temporary files of atomic writes: `.NAME.tmp-XXXXXXXX` (+ a suffix).
TEMPORARY_MARK = ".tmp-"
BACKUP_DIR = "backup"

# Inside a backup directory: one directory per snapshot.
SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_STATE = "state.json"
SNAPSHOT_ARRAYS = "arrays.npz"

# Columns that lead every history row, in this order; metric columns follow.
HISTORY_LEADING_COLUMNS = ("epoch",)
HISTORY_TRAILING_COLUMNS = ("learning_rate", "wall_time", "epoch_time")

# Leading fields of every per-batch record; named metrics follow as float32.
BATCH_FIELDS = (
    ("step", "<i8"),
    ("epoch", "<i4"),
    ("batch", "<i4"),
    ("size", "<i4"),
    ("loss", "<f4"),
)


def batch_record_dtype(metric_names=()):
    """The numpy dtype of one per-batch record with these named metrics."""
    return np.dtype(list(BATCH_FIELDS) + [(name, "<f4") for name in metric_names])


class RunDirectoryError(ValueError):
    """A path is not a run directory, or a run file cannot be understood."""


def utc_now():
    """The current time as an ISO 8601 string in UTC, to the millisecond."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds")


# --- one writer per run -------------------------------------------------------

_chief_override = None
_scratch_root = None


def set_chief(is_chief_process):
    """Overrides what `is_chief` decides (`None` goes back to TF_CONFIG).
    Set from a distribution strategy's cluster resolver when there is one."""
    global _chief_override
    _chief_override = is_chief_process


def is_chief():
    """Whether this process writes the run's files.

    A single process is the chief. In a multi-worker job, TF_CONFIG says:
    the `chief` task, or worker 0 when the cluster has no chief. Other tasks
    (workers, evaluators) write only to a private scratch directory.
    """
    if _chief_override is not None:
        return _chief_override
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        config = json.loads(raw)
        task = config.get("task") or {}
        cluster = config.get("cluster") or {}
        task_type, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as error:
        raise RunDirectoryError(f"TF_CONFIG is not valid JSON of a cluster ({error})") from None
    if not task_type or task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


def writable_path(path):
    """Where this process writes `path`: itself on the chief, else the same
    path under a private scratch directory removed when the process exits."""
    if is_chief():
        return os.fspath(path)
    global _scratch_root
    if _scratch_root is None:
        _scratch_root = tempfile.mkdtemp(prefix="kcallbacks-non-chief-")
        atexit.register(shutil.rmtree, _scratch_root, True)
    path = os.path.abspath(os.fspath(path))
    if path.startswith(_scratch_root + os.sep):
        return path
    return os.path.join(_scratch_root, path.lstrip(os.sep))


# --- low-level durable writes -------------------------------------------------


def _fsync_directory(path):
    # A rename is durable only once the directory entry itself is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _renamed_into_place(tmp_path, path):
    """Renames `tmp_path` over `path` if the block succeeds, then makes the
    rename durable; removes `tmp_path` if the block (or the rename) fails."""
    try:
        yield
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _temporary_name(path, suffix=""):
    # Left for the writer to create, so the file gets the usual permissions
    # (mkstemp's are owner-only).
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yields a file object whose content replaces `path` atomically on exit.

    The data goes to a temporary file `.NAME.tmp-XXXXXXXX` in the same
    directory, is fsynced, then renamed over `path`. If the block raises, the
    temporary file is removed and `path` is untouched, so a reader never sees
    a partial file under the final name.
    """
    path = writable_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = _temporary_name(path)
    with _renamed_into_place(tmp_path, path):
        encoding = None if "b" in mode else "utf-8"
        newline = None if "b" in mode else ""
        with open(tmp_path, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_file(path, write, suffix=""):
    """Makes `path` atomically from `write(temporary_path)`.

    For writers that take a file name rather than a file object (Keras'
    `model.save`, which also insists on the name's suffix): the temporary
    file is `.NAME.tmp-XXXXXXXX` + `suffix` beside `path`. Once `write`
    returns, the file is fsynced and renamed over `path`; if `write` raises,
    the temporary file is removed and `path` is untouched.
    """
    path = writable_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = _temporary_name(path, suffix)
    with _renamed_into_place(tmp_path, path):
        write(tmp_path)
        _fsync_file(tmp_path)


def atomic_link(source, path):
    """Makes `path` name the same complete file as `source`, atomically.

    A hard link when the file system has them (instant, no extra space; the
    content stays even when `source` is later deleted or replaced), else a
    copy. Either way it goes through a temporary name and a rename, so `path`
    always names a complete file.
    """
    source, path = writable_path(source), writable_path(path)
    tmp_path = _temporary_name(path)
    with _renamed_into_place(tmp_path, path):
        try:
            os.link(source, tmp_path)
        except OSError:
            shutil.copyfile(source, tmp_path)
            _fsync_file(tmp_path)


def remove_file(path):
    """Deletes `path` (a missing file is fine) and makes the deletion durable."""
    path = writable_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def remove_stale_temporaries(directory, is_target):
    """Deletes the temporary files (and directories) that a killed writer
    left in `directory`: those `atomic_output`, `atomic_file`, `atomic_link`
    or `atomic_directory` made for a final name for which `is_target(name)`
    is true. Returns the names removed."""
    directory = writable_path(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(".") or TEMPORARY_MARK not in name:
            continue
        target = name[1:].rsplit(TEMPORARY_MARK, 1)[0]
        if is_target(target):
            stale = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isdir(stale):
                    shutil.rmtree(stale)
                else:
                    os.unlink(stale)
                removed.append(name)
    return removed


def make_writable_directory(directory):
    """Makes `directory` if needed and proves it writable by creating and
    deleting a file in it (permission bits do not tell: root, read-only
    mounts). Raises OSError otherwise."""
    directory = writable_path(directory)
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".kcallbacks-probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory that becomes `path` atomically on exit.

    Files written inside are fsynced, then the directory is renamed to
    `path` (which must not exist). A crash at any point leaves either no
    `path` or a complete one; a leftover `.NAME.tmp-XXXXXXXX` directory is
    garbage that `remove_stale_temporaries` clears.
    """
    path = os.path.abspath(writable_path(path))
    parent = os.path.dirname(path)
    tmp_dir = _temporary_name(path)
    os.makedirs(tmp_dir)
    try:
        yield tmp_dir
        for name in os.listdir(tmp_dir):
            _fsync_file(os.path.join(tmp_dir, name))
        _fsync_directory(tmp_dir)
        os.rename(tmp_dir, path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    _fsync_directory(parent)


def atomic_write_text(path, text):
    with atomic_output(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def durable_append(path, data):
    """Appends bytes or text to `path`, then flushes and fsyncs it."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = writable_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def append_json_line(path, record):
    """Appends one JSON line durably. If the file ends in a torn line (a
    crash mid-append), the new line starts on a line of its own, so the torn
    fragment stays one unreadable line instead of swallowing this record."""
    path = writable_path(path)
    line = json_line(record)
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
    except (FileNotFoundError, OSError):
        pass  # a new or empty file
    durable_append(path, line)


def _json_default(value):
    # numpy scalars and arrays reach us from logs and configs.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def json_line(obj):
    """One JSON object on one line. NaN and infinities are kept as the
    `NaN`/`Infinity`/`-Infinity` tokens Python's json module reads back."""
    return json.dumps(obj, default=_json_default, allow_nan=True) + "\n"


def read_json_lines(path):
    """Reads a JSON-lines file; returns (records, warnings).

    A last line that does not parse (a torn append) is skipped with a warning;
    a bad line elsewhere is skipped with a warning too, never an exception.
    """
    records, warnings, unreadable = [], [], []
    if not os.path.exists(path):
        return records, warnings
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    torn_tail = not raw.endswith(b"\n") and lines[-1] != b""
    name = os.path.basename(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == len(lines)
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError, RecursionError):
            if is_last and torn_tail:
                warnings.append(f"{name}: ignored a torn last line (line {number})")
            else:
                unreadable.append(number)
            continue
        records.append(record)
    # Binary garbage can make hundreds of bad lines: one warning says it all.
    if len(unreadable) == 1:
        warnings.insert(0, f"{name}: ignored unreadable line {unreadable[0]}")
    elif unreadable:
        shown = ", ".join(map(str, unreadable[:5])) + (", ..." if len(unreadable) > 5 else "")
        warnings.insert(0, f"{name}: ignored {len(unreadable)} unreadable lines ({shown})")
    return records, warnings


# --- CSV tables ---------------------------------------------------------------


def format_csv_value(value, missing):
    """How a value is spelt in our CSV files, matching Keras' CSVLogger."""
    if value is None:
        return missing
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return f"[{', '.join(map(str, value))}]"
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


class CsvTable:
    """A CSV file that grows by whole rows and whose header can grow too.

    Rows are appended durably. A row with a key the header lacks makes the
    whole file be rewritten (atomically) with the wider header, so a metric
    that first appears in epoch 3 is kept: earlier rows get `missing` in it.
    """

    def __init__(self, path, separator=",", missing="", order=None):
        self.path = writable_path(path)
        self.separator = separator
        self.missing = missing
        self.order = order or order_history_columns
        self.columns = self._read_header()

    def _read_header(self):
        if not os.path.exists(self.path):
            return None
        with open(self.path, newline="", encoding="utf-8") as f:
            first = f.readline()
        if not first.strip():
            return None
        return next(csv.reader([first], delimiter=self.separator))

    def _render(self, rows, header):
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.separator, lineterminator="\r\n")
        if header:
            writer.writerow(self.columns)
        for row in rows:
            writer.writerow(
                [format_csv_value(row.get(c), self.missing) for c in self.columns]
            )
        return buffer.getvalue()

    def read_rows(self):
        """The data rows as dicts of strings (for rewriting)."""
        if self.columns is None:
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            text = f.read()
        # A torn last line (no line end) is dropped, not half-kept.
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.reader(io.StringIO(text), delimiter=self.separator)
        next(reader, None)
        return [dict(zip(self.columns, values)) for values in reader if values]

    def rewrite(self, columns, rows):
        """Atomically replaces the whole file with `columns` and `rows`."""
        self.columns = list(columns)
        with atomic_output(self.path, "w") as f:
            f.write(self._render(rows, header=True))

    def append(self, row, columns):
        """Appends one row; `columns` is the header a new file gets."""
        if self.columns is None:
            self.rewrite(columns, [row])
            return
        new_columns = [c for c in columns if c not in self.columns]
        new_columns += [c for c in row if c not in self.columns and c not in new_columns]
        if new_columns:
            old_rows = self.read_rows()
            self.rewrite(self.order(self.columns + new_columns), old_rows + [row])
            return
        durable_append(self.path, self._render([row], header=False))


def order_history_columns(columns):
    """`epoch` first, then the metrics sorted by name (as Keras' CSVLogger
    sorts them), then learning rate and timing."""
    leading = [c for c in HISTORY_LEADING_COLUMNS if c in columns]
    trailing = [c for c in HISTORY_TRAILING_COLUMNS if c in columns]
    middle = sorted(c for c in columns if c not in leading and c not in trailing)
    return leading + middle + trailing


# --- the run directory --------------------------------------------------------


class RunDirectory:
    """Reads and writes one run directory.

    Args:
        path: the directory.
        create: make the directory and a fresh manifest when none exists.
            Without it, a path that holds no `run.json` raises
            `RunDirectoryError`.
    """

    def __init__(self, path, create=False):
        # A writer (create=True) on a non-chief process works in scratch.
        self.path = os.path.abspath(writable_path(path) if create else os.fspath(path))
        manifest_path = os.path.join(self.path, MANIFEST)
        if create:
            os.makedirs(self.path, exist_ok=True)
            if not os.path.exists(manifest_path):
                now = utc_now()
                atomic_write_json(
                    manifest_path,
                    {
                        "schema_version": SCHEMA_VERSION,
                        "run_id": uuid.uuid4().hex[:12],
                        "name": os.path.basename(self.path),
                        "created": now,
                        "updated": now,
                        "status": "created",
                    },
                )
        elif not os.path.isdir(self.path):
            raise RunDirectoryError(f"{self.path}: no such run directory")
        elif not os.path.exists(manifest_path):
            raise RunDirectoryError(
                f"{self.path}: not a run directory (no {MANIFEST})"
            )
        self._history_table = None

    def file(self, name):
        return os.path.join(self.path, name)

    def relative_path(self, path):
        """`path` relative to the run directory when it lies inside it (so a
        moved run still names its own files), else absolute."""
        path = os.path.abspath(os.fspath(path))
        if os.path.commonpath([path, self.path]) == self.path:
            return os.path.relpath(path, self.path)
        return path

    # manifest

    def read_manifest(self):
        path = self.file(MANIFEST)
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise RunDirectoryError(f"{self.path}: not a run directory (no {MANIFEST})")
        except (ValueError, UnicodeDecodeError) as error:
            raise RunDirectoryError(f"{path}: corrupted manifest ({error})") from None
        if not isinstance(manifest, dict):
            raise RunDirectoryError(f"{path}: corrupted manifest (not a JSON object)")
        version = manifest.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise RunDirectoryError(
                f"{path}: schema version {version} is newer than this "
                f"kcallbacks understands ({SCHEMA_VERSION}); upgrade kcallbacks"
            )
        return manifest

    def update_manifest(self, **fields):
        """Merges `fields` into the manifest and replaces it atomically."""
        manifest = self.read_manifest()
        manifest.update(fields)
        manifest["updated"] = utc_now()
        atomic_write_json(self.file(MANIFEST), manifest)
        return manifest

    # epoch history

    def _history_csv(self):
        if self._history_table is None:
            self._history_table = CsvTable(self.file(HISTORY_CSV))
        return self._history_table

    def append_history(self, row):
        """Appends one epoch row to history.jsonl and history.csv, durably."""
        append_json_line(self.file(HISTORY_JSONL), row)
        self._history_csv().append(row, order_history_columns(list(row)))

    def read_history_rows(self):
        """(rows, warnings) from history.jsonl."""
        return read_json_lines(self.file(HISTORY_JSONL))

    def truncate_history(self, from_epoch):
        """Drops every row whose epoch is at or after `from_epoch`.

        Returns the number of rows dropped. Both files are rewritten
        atomically, and only when something is dropped (or a torn line must go).
        """
        rows, warnings = self.read_history_rows()
        kept = [r for r in rows if _as_int(r.get("epoch"), -1) < from_epoch]
        if len(kept) == len(rows) and not warnings:
            return 0
        columns = set()
        for r in kept:
            columns.update(r)
        # The CSV first: the JSON lines are what the next truncation reads,
        # so a crash between the two rewrites is redone, not left half done.
        self._history_csv().rewrite(order_history_columns(columns), kept)
        with atomic_output(self.file(HISTORY_JSONL), "w") as f:
            f.writelines(json_line(r) for r in kept)
        return len(rows) - len(kept)

    # event log

    def append_event(self, event_type, **fields):
        """Appends one event (`checkpoint_saved`, `lr_reduced`, ...) durably."""
        record = {"time": utc_now(), "type": event_type}
        record.update(fields)
        append_json_line(self.file(EVENTS_JSONL), record)
        return record

    def events_size(self):
        """The event log's length in bytes: a point to truncate back to."""
        try:
            return os.path.getsize(self.file(EVENTS_JSONL))
        except FileNotFoundError:
            return 0

    def truncate_events(self, size, keep_types=()):
        """Cuts the event log back to `size` bytes (a restored snapshot's
        point): the events of training that was rolled back go, except those
        of `keep_types` (records of the attempts themselves), which are
        appended again in their order."""
        path = self.file(EVENTS_JSONL)
        if not os.path.exists(path) or os.path.getsize(path) <= size:
            return
        with open(path, "r+b") as f:
            f.seek(size)
            tail = f.read()
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        kept = []
        for line in tail.split(b"\n"):
            try:
                record = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue  # a torn line
            if isinstance(record, dict) and record.get("type") in keep_types:
                kept.append(json_line(record))
        if kept:
            durable_append(path, "".join(kept))

    def read_events(self):
        return read_json_lines(self.file(EVENTS_JSONL))

    # per-batch log

    def open_batch_log(self, metric_names=()):
        """Declares the per-batch log's columns; returns its numpy dtype.

        The first call writes `batches.json`; a later call (a resumed run)
        must name the same metrics, or the log would mix layouts.
        """
        metric_names = list(metric_names)
        schema_path = self.file(BATCHES_SCHEMA)
        schema = {
            "columns": [name for name, _ in BATCH_FIELDS] + metric_names,
            "dtypes": [code for _, code in BATCH_FIELDS] + ["<f4"] * len(metric_names),
        }
        if os.path.exists(schema_path):
            existing = self._read_batch_schema()
            if existing != schema:
                raise RunDirectoryError(
                    f"{schema_path}: this run's per-batch log has columns "
                    f"{existing['columns']}, not {schema['columns']}; "
                    "use the same metrics to resume it, or a new run directory"
                )
        else:
            atomic_write_json(schema_path, schema)
        return batch_record_dtype(metric_names)

    def _read_batch_schema(self):
        path = self.file(BATCHES_SCHEMA)
        try:
            with open(path, encoding="utf-8") as f:
                schema = json.load(f)
            np.dtype(list(zip(schema["columns"], schema["dtypes"])))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise RunDirectoryError(f"{path}: corrupted batch schema ({error})") from None
        return schema

    def append_batches(self, records):
        """Appends a numpy structured array of batch records, durably."""
        if len(records):
            durable_append(self.file(BATCHES_BIN), records.tobytes())

    def read_batch_records(self):
        """(records, warnings): the per-batch log as a numpy structured array."""
        path = self.file(BATCHES_BIN)
        if not os.path.exists(self.file(BATCHES_SCHEMA)) or not os.path.exists(path):
            return None, []
        schema = self._read_batch_schema()
        dtype = np.dtype(list(zip(schema["columns"], schema["dtypes"])))
        size = os.path.getsize(path)
        whole = size // dtype.itemsize
        warnings = []
        if size % dtype.itemsize:
            warnings.append(
                f"{BATCHES_BIN}: ignored a torn last record "
                f"({size % dtype.itemsize} bytes)"
            )
        records = np.fromfile(path, dtype=dtype, count=whole)
        return records, warnings

    def truncate_batches(self, from_step):
        """Drops records whose global step is at or after `from_step`, and any
        torn tail. Returns the number of whole records dropped."""
        path = self.file(BATCHES_BIN)
        records, _ = self.read_batch_records()
        if records is None:
            return 0
        # Steps only grow within the file, so the cut is a binary search.
        keep = int(np.searchsorted(records["step"], from_step, side="left"))
        dropped = len(records) - keep
        with open(path, "r+b") as f:
            f.truncate(keep * records.dtype.itemsize)
            f.flush()
            os.fsync(f.fileno())
        return dropped


# --- backup snapshots ---------------------------------------------------------


def snapshot_path(backup_dir, sequence):
    return os.path.join(os.fspath(backup_dir), f"{SNAPSHOT_PREFIX}{sequence:08d}")


def list_snapshots(backup_dir):
    """[(sequence, path)] of the complete snapshots, newest first."""
    backup_dir = os.fspath(backup_dir)
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        number = name[len(SNAPSHOT_PREFIX):]
        if name.startswith(SNAPSHOT_PREFIX) and number.isdigit():
            found.append((int(number), os.path.join(backup_dir, name)))
    return sorted(found, reverse=True)


def write_snapshot(backup_dir, sequence, state, arrays):
    """Writes one snapshot (a JSON state and named numpy arrays) atomically."""
    with atomic_directory(snapshot_path(backup_dir, sequence)) as tmp_dir:
        with open(os.path.join(tmp_dir, SNAPSHOT_ARRAYS), "wb") as f:
            np.savez(f, **arrays)
        with open(os.path.join(tmp_dir, SNAPSHOT_STATE), "w", encoding="utf-8") as f:
            f.write(json.dumps(state, default=_json_default))


def read_snapshot(path):
    """(state, arrays) of one snapshot directory; arrays are loaded eagerly."""
    with open(os.path.join(path, SNAPSHOT_STATE), encoding="utf-8") as f:
        state = json.load(f)
    with np.load(os.path.join(path, SNAPSHOT_ARRAYS), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    return state, arrays


def remove_snapshot(path):
    shutil.rmtree(writable_path(path), ignore_errors=True)


def write_checkpoint_index(directory, index):
    """Replaces `directory/checkpoints.json` atomically with `index`."""
    atomic_write_text(
        os.path.join(directory, CHECKPOINT_INDEX),
        json.dumps(index, indent=2, default=_json_default, allow_nan=True) + "\n",
    )


def read_checkpoint_index(directory):
    """The parsed `checkpoints.json` of `directory`, or None if it has none.

    Raises:
        RunDirectoryError: the file exists but is not a JSON object.
    """
    path = os.path.join(directory, CHECKPOINT_INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as error:
        raise RunDirectoryError(f"{path}: corrupted checkpoint index ({error})") from None
    if not isinstance(index, dict):
        raise RunDirectoryError(f"{path}: corrupted checkpoint index (not a JSON object)")
    return index


def _as_int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default



# --- reading a run back -------------------------------------------------------


class Run:
    """A run directory read back into pandas.

    Attributes:
        path: the run directory.
        manifest: the parsed `run.json` (a dict).
        history: one row per epoch (a DataFrame; empty if none was logged).
        recorded: booleans shaped like `history`: whether the epoch's row
            had that key. Tells a metric that was absent in an epoch (False)
            from one that was logged as NaN (True); both read as NaN.
        batches: one row per training step (a DataFrame; empty if none).
        events: one row per event: `time`, `type`, then each event's own
            fields as columns (a DataFrame; empty if none).
        warnings: what was skipped while reading (torn lines, bad records).
    """

    def __init__(self, path, manifest, history, recorded, batches, events, warnings):
        self.path = path
        self.manifest = manifest
        self.history = history
        self.recorded = recorded
        self.batches = batches
        self.events = events
        self.warnings = warnings

    def __repr__(self):
        return (
            f"Run({self.path!r}, epochs={len(self.history)}, "
            f"batches={len(self.batches)}, events={len(self.events)})"
        )


def load_run(path):
    """Reads a run directory written by kcallbacks.

    Args:
        path: the run directory.

    Returns:
        A `Run` with `.manifest`, `.history`, `.batches`, `.events` and
        `.warnings`.

    Raises:
        RunDirectoryError: `path` is missing, not a run directory, or its
            manifest is unreadable. The message names the path.
    """
    import pandas as pd

    run = RunDirectory(path)
    manifest = run.read_manifest()
    warnings = []

    rows, row_warnings = run.read_history_rows()
    warnings += row_warnings
    numbered = [r for r in rows if _is_epoch_number(r.get("epoch"))]
    if len(numbered) < len(rows):
        warnings.append(
            f"{HISTORY_JSONL}: ignored {len(rows) - len(numbered)} rows "
            "without a whole-number epoch"
        )
    history = pd.DataFrame.from_records(numbered)
    # NaN in the frame is either a NaN the fit logged or a key the row lacked.
    recorded = pd.DataFrame.from_records([dict.fromkeys(r, True) for r in numbered]).notna()
    if len(history):
        history = history[order_history_columns(list(history.columns))]
        history = _numeric_columns(history)
        # One row per epoch: a duplicate (possible only if a writer crashed
        # between appending and truncating) keeps the later row.
        if history["epoch"].duplicated().any():
            warnings.append("history.jsonl: duplicate epochs, kept the latest row of each")
            history = history.drop_duplicates("epoch", keep="last")
        history = history.sort_values("epoch", kind="stable")
        recorded = recorded.loc[history.index, history.columns].reset_index(drop=True)
        history = history.reset_index(drop=True)

    try:
        records, batch_warnings = run.read_batch_records()
    except RunDirectoryError as error:
        records, batch_warnings = None, [f"per-batch log ignored: {error}"]
    warnings += batch_warnings
    if records is not None:
        records, garbage_warnings = _valid_batch_prefix(records)
        warnings += garbage_warnings
    batches = pd.DataFrame(records) if records is not None else pd.DataFrame(
        columns=[name for name, _ in BATCH_FIELDS]
    )

    event_rows, event_warnings = run.read_events()
    warnings += event_warnings
    events = pd.DataFrame.from_records(event_rows)
    if len(events) == 0:
        events = pd.DataFrame(columns=["time", "type"])

    return Run(run.path, manifest, history, recorded, batches, events, warnings)


def _is_epoch_number(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_batch_prefix(records):
    """The records up to the first one that cannot be real: a writer only ever
    appends growing, non-negative steps, so a step that goes backwards (or an
    absurd epoch or batch) means the rest of the file is garbage."""
    steps = records["step"]
    bad = (steps < 0) | (records["epoch"] < 0) | (records["batch"] < 0)
    bad[1:] |= steps[1:] <= steps[:-1]
    if not bad.any():
        return records, []
    first = int(np.argmax(bad))
    return records[:first], [
        f"{BATCHES_BIN}: ignored {len(records) - first} records from record "
        f"{first} on (steps stop increasing: not written by a batch logger)"
    ]


def _numeric_columns(frame):
    import pandas as pd

    for column in frame.columns:
        converted = pd.to_numeric(frame[column], errors="coerce")
        # Keep a column as numbers only if nothing but missing values was lost.
        if converted.notna().sum() == frame[column].notna().sum():
            frame[column] = converted
    return frame
