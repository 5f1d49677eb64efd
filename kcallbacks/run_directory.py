"""The run directory and its logs: manifest, history, events, per-batch log.

`RunDirectory` is how the callbacks write a run (and how the reader opens
one); `docs/run-format.md` documents the files. Durability comes from
`durable_io`, file names from `run_format`. Imports no Keras.
"""

import json
import os
import uuid

import numpy as np

from kcallbacks.csv_table import CsvTable, order_history_columns
from kcallbacks.durable_io import (
    append_json_line,
    atomic_output,
    atomic_write_json,
    durable_append,
    json_line,
    read_json_lines,
    read_new_json_lines,
)
from kcallbacks.run_format import (
    BATCH_FIELDS,
    BATCHES_BIN,
    BATCHES_SCHEMA,
    CHECKPOINT_INDEX,
    EVENTS_JSONL,
    HISTORY_CSV,
    HISTORY_JSONL,
    MANIFEST,
    SCHEMA_VERSION,
    RunDirectoryError,
    batch_record_dtype,
    utc_now,
)
from kcallbacks.writer_role import writable_path


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

    def read_new_history_rows(self, offset, first_line=1):
        """(rows, warnings, end, lines): the rows appended after byte
        `offset`, which starts line `first_line` (see `read_new_json_lines`)."""
        return read_new_json_lines(self.file(HISTORY_JSONL), offset, first_line)

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

    def event_offset_from_epoch(self, epoch, except_types=()):
        """The byte offset of the first event about epoch `epoch` or later
        (types in `except_types` aside), or None: where the events of
        training from that epoch on begin."""
        path = self.file(EVENTS_JSONL)
        if not os.path.exists(path):
            return None
        offset = 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    record = None  # a torn line
                if (
                    isinstance(record, dict)
                    and record.get("type") not in except_types
                    and isinstance(record.get("epoch"), int)
                    and record["epoch"] >= epoch
                ):
                    return offset
                offset += len(line)
        return None

    def read_events(self):
        return read_json_lines(self.file(EVENTS_JSONL))

    def read_new_events(self, offset, first_line=1):
        """(events, warnings, end, lines): the events appended after byte
        `offset`, which starts line `first_line` (see `read_new_json_lines`)."""
        return read_new_json_lines(self.file(EVENTS_JSONL), offset, first_line)

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
            dtype = np.dtype(list(zip(schema["columns"], schema["dtypes"])))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise RunDirectoryError(f"{path}: corrupted batch schema ({error})") from None
        leading = [(name, np.dtype(code)) for name, code in BATCH_FIELDS]
        fields = [(name, dtype.fields[name][0]) for name in dtype.names]
        if fields[: len(leading)] != leading or any(t.kind != "f" for _, t in fields[len(leading):]):
            raise RunDirectoryError(
                f"{path}: corrupted batch schema (it must start with "
                f"{[name for name, _ in BATCH_FIELDS]} and add only float columns)"
            )
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
        dtype = self.batch_dtype()
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

    def batch_dtype(self):
        """The numpy dtype of the per-batch log's records (from its schema)."""
        schema = self._read_batch_schema()
        return np.dtype(list(zip(schema["columns"], schema["dtypes"])))

    def read_new_batch_records(self, offset, dtype):
        """(records, end): the whole records appended after byte `offset`
        (a record still being appended is left for the next call)."""
        try:
            with open(self.file(BATCHES_BIN), "rb") as f:
                f.seek(offset)
                raw = f.read()
        except FileNotFoundError:
            return np.zeros(0, dtype), offset
        whole = len(raw) // dtype.itemsize * dtype.itemsize
        return np.frombuffer(raw[:whole], dtype=dtype).copy(), offset + whole

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


def write_checkpoint_index(directory, index):
    """Replaces `directory/checkpoints.json` atomically with `index`."""
    atomic_write_json(os.path.join(directory, CHECKPOINT_INDEX), index)


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
