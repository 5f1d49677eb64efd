"""CSVLogger: Keras' CSVLogger, file for file, without dropping late metrics."""

import os

from kcallbacks.csv_table import CsvTable
from kcallbacks.durable_io import atomic_write_text
from kcallbacks.history_logger import log_value
from kcallbacks.run_callback import RunCallback


def _keras_column_order(columns):
    return ["epoch"] + sorted(c for c in columns if c != "epoch")


class CSVLogger(RunCallback):
    """Streams epoch results to a CSV file, as `keras.callbacks.CSVLogger` does.

    Same arguments and same file: an `epoch` column (0-based), then the logs'
    keys sorted by name, `NA` for a missing value, and, as Keras does when a
    fit has no validation data, `val_` columns for every key, holding `NA`.
    It differs where Keras loses data: a key that first appears in a later
    epoch widens the header (the file is rewritten atomically) instead of
    being dropped, and each row is fsynced, not only flushed.

    Args:
        filename: path of the CSV file, e.g. `"run/log.csv"`.
        separator: string that separates the fields.
        append: `True` appends to an existing file (for continuing
            training); `False` overwrites it when training begins.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=3, callbacks=[kcallbacks.CSVLogger("training.log")])
    ```
    """

    # Writes its own file, not a run directory.
    borrows_run_dir = False

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = append
        self.keys = None
        self._table = None

    def move_into_trial(self, rebase):
        super().move_into_trial(rebase)
        self.filename = rebase(self.filename, is_file=True)

    def begin_fit(self, logs=None):
        if not self.append:
            atomic_write_text(self.filename, "")
        self._table = CsvTable(
            self.filename, separator=self.sep, missing="NA", order=_keras_column_order
        )
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in self.keys]
        else:
            self.keys += sorted(k for k in logs if k not in self.keys)
        row = {"epoch": epoch}
        row.update((key, log_value(logs.get(key))) for key in self.keys)
        self._table.append(row, ["epoch"] + self.keys)

    def end_fit(self, logs=None):
        self._table = None
