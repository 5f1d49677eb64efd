"""standard_callbacks: the whole kcallbacks suite for one run directory."""

import os

from kcallbacks.run_format import BACKUP_DIR, CHECKPOINTS_DIR


def standard_callbacks(
    run_dir,
    monitor="val_loss",
    mode="auto",
    max_to_keep=3,
    early_stopping_patience=None,
    reduce_lr_patience=None,
    reduce_lr_factor=0.5,
    min_lr=0.0,
    backup_freq="epoch",
    batch_metrics=None,
    live=False,
    live_every=2.0,
    hparams=None,
):
    """The standard callback list for a run directory, ready for `fit`.

    Returns, in this order: `HistoryLogger`, `BatchLossTracker`,
    `ModelCheckpoint` (best weights by `monitor`, into
    `RUN_DIR/checkpoints/{epoch:02d}-{<monitor>:.4f}.weights.h5`, keeping
    `max_to_keep`, written in the background: `async_save=True`),
    `BackupAndRestore` into `RUN_DIR/backup`, then
    `ReduceLROnPlateau` if `reduce_lr_patience` is set and `EarlyStopping`
    (with `restore_best_weights=True`) if `early_stopping_patience` is set,
    and last `LiveCharts` if `live` is set.
    `BackupAndRestore` comes before `EarlyStopping` so that its final
    snapshot holds the last epoch's weights (with EarlyStopping's state, which
    puts the best weights back on a re-run): a finished run that is later
    given more epochs continues as one longer run would have. Re-running an
    interrupted script with the same list resumes it exactly; `kreport build
    RUN_DIR` reports on it.

    Args:
        run_dir: the run directory.
        monitor: quantity that decides the best checkpoint, the LR plateau
            and early stopping.
        mode: `"auto"`, `"min"` or `"max"` for `monitor`.
        max_to_keep: how many best checkpoints to keep.
        early_stopping_patience: epochs without improvement before
            stopping; `None` for no early stopping.
        reduce_lr_patience: epochs without improvement before the learning
            rate is multiplied by `reduce_lr_factor`; `None` for no plateau
            schedule.
        reduce_lr_factor: factor for `ReduceLROnPlateau`.
        min_lr: lower bound for `ReduceLROnPlateau`.
        backup_freq: `save_freq` of `BackupAndRestore`: `"epoch"` or a
            number of batches.
        batch_metrics: metrics `BatchLossTracker` records per step too.
        live: in a Jupyter notebook, show the run's charts in the cell's
            output while it trains, and its report when it ends
            (`LiveCharts`); outside a notebook this does nothing.
        live_every: the least number of seconds between two redraws of
            the live charts.
        hparams: the run's hyperparameters, a flat dict of names to
            numbers, bools, strings or None, recorded in the manifest with
            those every fit shows (see `HistoryLogger`); `kreport compare`
            sorts and charts a study's runs by them.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(256, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, validation_split=0.25, epochs=10,
              callbacks=kcallbacks.standard_callbacks(
                  "runs/exp1", early_stopping_patience=3, reduce_lr_patience=2))
    ```
    """
    import kcallbacks

    run_dir = str(run_dir)
    checkpoint_template = os.path.join(
        run_dir, CHECKPOINTS_DIR, f"{{epoch:02d}}-{{{monitor}:.4f}}.weights.h5"
    )
    callbacks = [
        kcallbacks.HistoryLogger(run_dir, hparams=hparams),
        kcallbacks.BatchLossTracker(run_dir, metrics=batch_metrics),
        kcallbacks.ModelCheckpoint(
            checkpoint_template, monitor=monitor, mode=mode, save_best_only=True,
            save_weights_only=True, max_to_keep=max_to_keep,
            # The fit waits only for the copy to host memory, not for the
            # file and its fsyncs (about 12 ms an epoch on a small model).
            async_save=True,
        ),
        kcallbacks.BackupAndRestore(os.path.join(run_dir, BACKUP_DIR), save_freq=backup_freq),
    ]
    if reduce_lr_patience is not None:
        callbacks.append(
            kcallbacks.ReduceLROnPlateau(
                monitor=monitor, mode=mode, factor=reduce_lr_factor,
                patience=reduce_lr_patience, min_lr=min_lr,
            )
        )
    if early_stopping_patience is not None:
        callbacks.append(
            kcallbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=early_stopping_patience,
                restore_best_weights=True,
            )
        )
    if live:
        # Last: at train end the others have written their last word, which
        # the report it shows then reads.
        callbacks.append(kcallbacks.LiveCharts(every=live_every))
    return callbacks
