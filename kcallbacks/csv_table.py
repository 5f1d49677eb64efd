"""CSV tables that grow by whole rows, durably, and whose header can grow."""

import csv
import io
import os

import numpy as np

from kcallbacks.durable_io import atomic_output, durable_append
from kcallbacks.run_format import HISTORY_LEADING_COLUMNS, HISTORY_TRAILING_COLUMNS
from kcallbacks.writer_role import writable_path


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


