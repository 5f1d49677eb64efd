"""Reading a run directory back into pandas: `load_run` and `Run`.

Tolerant of what a crash or a damaged disk leaves: torn last lines, garbage
lines and records are skipped with a warning, never an exception. pandas is
imported on first use.
"""

import dataclasses
import typing

import numpy as np

from kcallbacks.csv_table import order_history_columns
from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import BATCH_FIELDS, BATCHES_BIN, HISTORY_JSONL, RunDirectoryError

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
