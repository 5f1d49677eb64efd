"""Reading a run directory back: `load_run` into pandas, `RunFollower` as it
is written.

Tolerant of what a crash or a damaged disk leaves: torn last lines, garbage
lines and records are skipped with a warning, never an exception. pandas is
imported on first use.
"""

import dataclasses
import os
import typing

import numpy as np

from kcallbacks.csv_table import order_history_columns
from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import (
    BATCH_FIELDS,
    BATCHES_BIN,
    BATCHES_SCHEMA,
    EVENTS_JSONL,
    HISTORY_JSONL,
    MANIFEST,
    Event,
    RunDirectoryError,
)

if typing.TYPE_CHECKING:  # pandas is imported on first read, not with this module
    import pandas


@dataclasses.dataclass(repr=False, eq=False)
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

    path: str
    manifest: dict
    history: "pandas.DataFrame"
    recorded: "pandas.DataFrame"
    batches: "pandas.DataFrame"
    events: "pandas.DataFrame"
    warnings: list

    def __repr__(self):
        return (
            f"Run({self.path!r}, epochs={len(self.history)}, "
            f"batches={len(self.batches)}, events={len(self.events)})"
        )


def load_run(path, per_batch=True):
    """Reads a run directory written by kcallbacks.

    Args:
        path: the run directory.
        per_batch: False leaves the per-batch log unread (`batches` is
            empty): what a study of many runs reads.

    Returns:
        A `Run` with `.manifest`, `.history`, `.batches`, `.events` and
        `.warnings`.

    Raises:
        RunDirectoryError: `path` is missing, not a run directory, or its
            manifest is unreadable. The message names the path.
    """
    run = RunDirectory(path)
    manifest = run.read_manifest()
    rows, warnings = run.read_history_rows()
    records, batch_warnings = None, []
    if per_batch:
        try:
            records, batch_warnings = run.read_batch_records()
        except RunDirectoryError as error:
            records, batch_warnings = None, [f"per-batch log ignored: {error}"]
    warnings += batch_warnings
    if records is not None:
        records, garbage_warnings = _valid_batch_prefix(records)
        warnings += garbage_warnings
    event_rows, event_warnings = run.read_events()
    warnings += event_warnings
    return assemble_run(run.path, manifest, rows, records, event_rows, warnings)


def assemble_run(path, manifest, history_rows, batch_records, event_rows, warnings):
    """A `Run` from what was read of a run directory: `load_run` reads it
    whole, `kreport serve` a piece at a time (`RunFollower`).

    Args:
        path: the run directory.
        manifest: the parsed manifest.
        history_rows: the epoch rows (dicts), in file order.
        batch_records: the per-batch records (a numpy structured array, or
            a DataFrame, or None).
        event_rows: the events (dicts).
        warnings: what was skipped while reading; the history's own
            warnings are added to it.
    """
    import pandas as pd

    warnings = list(warnings)
    numbered = _numbered_rows(history_rows, warnings)
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

    if batch_records is None:
        batches = pd.DataFrame(columns=[name for name, _ in BATCH_FIELDS])
    else:
        batches = pd.DataFrame(batch_records)

    events = pd.DataFrame.from_records(event_rows)
    if len(events) == 0:
        events = pd.DataFrame(columns=["time", "type"])

    return Run(path, manifest, history, recorded, batches, events, warnings)


def load_histories(paths):
    """Reads many runs' manifests and epoch histories at once: what a study
    of hundreds of runs needs, without building a `Run` for each.

    Args:
        paths: run directories.

    Returns:
        (manifests, history, non_finite, warnings): `manifests[i]` is the
        manifest of `paths[i]`, None where it could not be read
        (`warnings[i]` says why); `history` holds every run's epoch rows in
        one DataFrame, with a `run` column (the run's index in `paths`), one
        row per run and epoch in epoch order (a duplicate epoch keeps the
        later row, as `load_run` does), every column but `run` numeric (a
        value that is not a number reads as missing, with a warning);
        `non_finite` lists (run, column, epoch) of each NaN or infinity the
        runs logged (a missing key is not one); `warnings[i]` lists what was
        skipped reading run i.
    """
    import pandas as pd

    manifests, warnings, rows = [], [], []
    for index, path in enumerate(paths):
        run_warnings = []
        try:
            run = RunDirectory(path)
            manifest = run.read_manifest()
            history_rows, read_warnings = run.read_history_rows()
        except (RunDirectoryError, OSError) as error:
            manifests.append(None)
            warnings.append([f"not read: {error}"])
            continue
        run_warnings += read_warnings
        for row in _numbered_rows(history_rows, run_warnings):
            row["run"] = index
            rows.append(row)
        manifests.append(manifest)
        warnings.append(run_warnings)
    history = pd.DataFrame.from_records(rows)
    non_finite = []
    if len(history):
        for column in history.columns.drop(["run", "epoch"]):
            values = pd.to_numeric(history[column], errors="coerce")
            lost = history[column].notna() & values.isna()
            for run, count in history.loc[lost, "run"].value_counts(sort=False).items():
                warnings[run].append(
                    f"history column '{column}' does not hold numbers in {count} "
                    f"epoch{'s' if count != 1 else ''}; read as missing"
                )
            history[column] = values
            # NaN where a row lacks the key too: only the rows that have it count.
            for position in np.flatnonzero(~np.isfinite(values.to_numpy(dtype="float64"))):
                if column in rows[position] and not lost.iloc[position]:
                    non_finite.append((int(history["run"].iloc[position]), column,
                                       int(history["epoch"].iloc[position])))
        duplicated = history.duplicated(["run", "epoch"], keep="last")
        for index in sorted(set(history.loc[duplicated, "run"])):
            warnings[index].append("history.jsonl: duplicate epochs, kept the latest row of each")
        history = history[~duplicated].sort_values(["run", "epoch"], kind="stable")
        history = history.reset_index(drop=True)
    return manifests, history, non_finite, warnings


def _numbered_rows(rows, warnings):
    """The history rows with a whole-number epoch; says how many had none."""
    numbered = [r for r in rows if _is_epoch_number(r.get("epoch"))]
    if len(numbered) < len(rows):
        warnings.append(
            f"{HISTORY_JSONL}: ignored {len(rows) - len(numbered)} rows "
            "without a whole-number epoch"
        )
    return numbered


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


# --- following a run as it is written -----------------------------------------


@dataclasses.dataclass(eq=False)
class RunChanges:
    """What one `RunFollower.poll()` found.

    Attributes:
        exists: whether the path is a run directory (has `run.json`) yet.
        reset: the run's files were cut back or replaced since the last poll
            (a resumed run rolls its logs back to a snapshot): drop what
            earlier polls gave; this poll's fields hold everything again.
        manifest: the manifest (a dict) if it changed since the last poll,
            else None.
        history_rows: new epoch rows (dicts), in file order.
        batches: new per-batch records (a numpy structured array), or None.
        events: new events (dicts), in file order.
        warnings: what was skipped while reading.
    """

    exists: bool = False
    reset: bool = False
    manifest: dict | None = None
    history_rows: list = dataclasses.field(default_factory=list)
    batches: np.ndarray | None = None
    events: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def changed(self):
        return bool(
            self.reset or self.manifest is not None or self.history_rows
            or (self.batches is not None and len(self.batches)) or self.events
            or self.warnings
        )


class _CutBack(Exception):
    """A file of the run shrank, was replaced or rewritten under the follower."""


# Bytes just before a log's read position that must still be there at the
# next poll: if not, the log was rewritten and is read again from the start.
_FINGERPRINT_BYTES = 64


@dataclasses.dataclass
class _Tail:
    """How far a log was read, and how to tell that it is still the same log."""

    identity: tuple = None
    offset: int = 0
    fingerprint: bytes = b""
    lines: int = 0  # whole lines read (JSON-lines logs), for warnings' line numbers


class RunFollower:
    """Reads a run directory while it is written: each `poll()` returns only
    what was appended since the previous one.

    A poll costs a few `stat` calls and reads of the new bytes, however long
    the run. When a file was cut back or replaced (a resumed run rolls its
    logs back to a snapshot), the poll reads everything again and says so
    with `reset`. A path that is not a run directory yet is not an error: it
    polls as `exists=False` until the run appears.

    Args:
        path: the run directory.

    Example:

    ```python
    follower = RunFollower("runs/exp1")
    changes = follower.poll()
    for row in changes.history_rows:
        print(row["epoch"], row.get("loss"))
    ```
    """

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        self._forget()
        self._read_again = False

    def _forget(self):
        self._run = None
        self._tails = {name: _Tail() for name in (HISTORY_JSONL, EVENTS_JSONL, BATCHES_BIN)}
        self._manifest_stamp = None
        self._batch_schema_stamp = None
        self._batch_dtype = None
        self._last_epoch = -1
        self._last_step = None
        self._batches_stopped = False

    def poll(self):
        """Returns a `RunChanges` with what was written since the last poll.

        Never raises for what it finds on disk: a file that cannot be read
        (permissions, an I/O error, a path through a file) is a warning, and
        the next poll reads everything again, since this one may have read
        part of what was appended."""
        try:
            try:
                changes = self._read(reset=self._read_again)
            except _CutBack:
                self._forget()
                changes = self._read(reset=True)
        except OSError as error:
            self._forget()
            self._read_again = True
            return RunChanges(warnings=[f"{self.path}: cannot read ({error.strerror or error})"])
        self._read_again = False
        return changes

    def _read(self, reset):
        changes = RunChanges(reset=reset)
        manifest_stamp = _stamp(os.path.join(self.path, MANIFEST))
        if manifest_stamp is None:
            if self._run is not None:
                raise _CutBack()  # the run directory went away
            return changes
        if self._run is None:
            try:
                self._run = RunDirectory(self.path)
            except RunDirectoryError:
                return changes
        changes.exists = True
        if manifest_stamp != self._manifest_stamp:
            self._manifest_stamp = manifest_stamp  # a damaged one is said once
            try:
                changes.manifest = self._run.read_manifest()
            except RunDirectoryError as error:
                changes.warnings.append(str(error))
        changes.history_rows = self._new_history_rows(changes.warnings)
        changes.events = self._new_events(changes.warnings)
        if not reset and any(
            e.get("type") in (Event.HISTORY_TRUNCATED, Event.BATCHES_TRUNCATED)
            for e in changes.events
        ):
            raise _CutBack()
        changes.batches = self._new_batches(changes.warnings)
        return changes

    def _tail_is_intact(self, name):
        """Whether the log `name` is still the file read so far, grown or not."""
        tail = self._tails[name]
        path = os.path.join(self.path, name)
        try:
            with open(path, "rb") as f:
                status = os.fstat(f.fileno())
                if tail.offset == 0:
                    tail.identity = (status.st_dev, status.st_ino)
                    return True
                if (status.st_dev, status.st_ino) != tail.identity or status.st_size < tail.offset:
                    return False
                f.seek(tail.offset - len(tail.fingerprint))
                return f.read(len(tail.fingerprint)) == tail.fingerprint
        except FileNotFoundError:
            return tail.offset == 0

    def _advance(self, name, end, lines=0):
        tail = self._tails[name]
        tail.lines += lines
        if end == tail.offset:
            return
        start = max(end - _FINGERPRINT_BYTES, 0)
        with open(os.path.join(self.path, name), "rb") as f:
            f.seek(start)
            tail.fingerprint = f.read(end - start)
        tail.offset = end

    def _new_lines(self, name, read, warnings):
        """The records of the JSON-lines log `name` appended since the last
        poll; `read` is the `RunDirectory` method that reads them."""
        if not self._tail_is_intact(name):
            raise _CutBack()
        tail = self._tails[name]
        records, new_warnings, end, lines = read(tail.offset, tail.lines + 1)
        self._advance(name, end, lines)
        warnings += new_warnings
        return records

    def _new_history_rows(self, warnings):
        rows = self._new_lines(HISTORY_JSONL, self._run.read_new_history_rows, warnings)
        numbered = _numbered_rows(rows, warnings)
        if any(row["epoch"] <= self._last_epoch for row in numbered):
            raise _CutBack()  # an epoch logged again since the last poll: read afresh
        # As in load_run: a duplicate epoch keeps its later row.
        latest = {row["epoch"]: row for row in numbered}
        numbered = [latest[epoch] for epoch in sorted(latest)]
        if numbered:
            self._last_epoch = max(self._last_epoch, max(row["epoch"] for row in numbered))
        return numbered

    def _new_events(self, warnings):
        return self._new_lines(EVENTS_JSONL, self._run.read_new_events, warnings)

    def _new_batches(self, warnings):
        schema_stamp = _stamp(os.path.join(self.path, BATCHES_SCHEMA))
        if schema_stamp != self._batch_schema_stamp:
            if self._batch_dtype is not None:
                raise _CutBack()  # the per-batch log was started over
            self._batch_schema_stamp = schema_stamp  # a damaged one is said once
            try:
                self._batch_dtype = self._run.batch_dtype()
            except (RunDirectoryError, FileNotFoundError) as error:
                if schema_stamp is not None:
                    warnings.append(f"per-batch log ignored: {error}")
                return None
        if self._batch_dtype is None or self._batches_stopped:
            return None
        if not self._tail_is_intact(BATCHES_BIN):
            raise _CutBack()
        records, end = self._run.read_new_batch_records(
            self._tails[BATCHES_BIN].offset, self._batch_dtype
        )
        self._advance(BATCHES_BIN, end)
        if not len(records):
            return records
        if self._last_step is not None and records["step"][0] <= self._last_step:
            raise _CutBack()  # steps went back: the log was rewritten
        valid, garbage_warnings = _valid_batch_prefix(records)
        if len(valid) < len(records):
            # As in load_run: what follows records that cannot be real is garbage.
            self._batches_stopped = True
            warnings += garbage_warnings
        if len(valid):
            self._last_step = int(valid["step"][-1])
        return valid


def _stamp(path):
    """What changes when a file is replaced or rewritten; None if it is missing."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
