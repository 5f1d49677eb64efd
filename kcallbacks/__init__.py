"""kcallbacks: Keras 3 callbacks that log, checkpoint and resume into one run directory.

Importing the package is cheap: the callbacks (and so Keras) load on first
use, and the run-directory modules (`run_format`, `durable_io`,
`run_directory`, `run_reader`, ...) never load Keras at all, which is how
the `kreport` CLI reads runs without TensorFlow.
"""

import importlib

__version__ = "0.3.0"

# Public name -> module that defines it.
_EXPORTS = {
    "HistoryLogger": "kcallbacks.history_logger",
    "CSVLogger": "kcallbacks.csv_logger",
    "BatchLossTracker": "kcallbacks.batch_loss_tracker",
    "BackupAndRestore": "kcallbacks.backup_and_restore",
    "SnapshotMismatchError": "kcallbacks.snapshots",
    "standard_callbacks": "kcallbacks.suite",
    "LiveCharts": "kcallbacks.live_charts",
    "ModelCheckpoint": "kcallbacks.model_checkpoint",
    "EarlyStopping": "kcallbacks.early_stopping",
    "ReduceLROnPlateau": "kcallbacks.reduce_lr_on_plateau",
    "LearningRateScheduleError": "kcallbacks.reduce_lr_on_plateau",
    "load_run": "kcallbacks.run_reader",
    "Run": "kcallbacks.run_reader",
    "RunDirectory": "kcallbacks.run_directory",
    "RunDirectoryError": "kcallbacks.run_format",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kcallbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
