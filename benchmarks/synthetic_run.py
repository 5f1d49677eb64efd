"""A synthetic run directory of any size, written through the RunDirectory API
(as the callbacks write it): a manifest, epoch history with train and
validation metrics, checkpoint / LR / early-stop / resume events, and a
per-batch log with noise and spikes.

Usage: python benchmarks/synthetic_run.py RUN_DIR [EPOCHS] [BATCH_ROWS]
"""

import sys
import time

import numpy as np

from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import Event, utc_now


def make_run(path, epochs=1000, batch_rows=1_000_000, seed=0):
    rng = np.random.default_rng(seed)
    run = RunDirectory(path, create=True)
    steps_per_epoch = max(batch_rows // epochs, 1)
    run.update_manifest(
        status="stopped_early",
        attempts=[
            {"started": utc_now(), "initial_epoch": 0, "ended": None},
            {"started": utc_now(), "initial_epoch": epochs // 2, "ended": utc_now()},
        ],
        ended=utc_now(),
        environment={"python": "3.11", "keras": "3", "backend": "tensorflow"},
        model={"name": "synthetic", "class": "Sequential", "summary": "(synthetic)",
               "total_params": 1000, "trainable_params": 1000},
        optimizer={"class": "Adam", "config": {"learning_rate": 0.001}},
        fit_params={"epochs": epochs + 10, "steps": steps_per_epoch, "verbose": 0},
        callbacks=[
            {"class": "kcallbacks.ModelCheckpoint", "config": {"monitor": "val_loss", "mode": "min"}},
            {"class": "kcallbacks.EarlyStopping", "config": {"monitor": "val_accuracy", "mode": "max"}},
        ],
        last_epoch=epochs - 1,
    )
    start = time.time() - epochs
    decay = np.exp(-np.arange(epochs) / (epochs / 5))
    learning_rate = 0.001
    best = np.inf
    for epoch in range(epochs):
        loss = float(decay[epoch] + 0.05 * rng.random())
        val_loss = float(decay[epoch] * 1.1 + 0.08 * rng.random())
        run.append_history({
            "epoch": epoch,
            "accuracy": 1 - loss / 2, "loss": loss,
            "val_accuracy": 1 - val_loss / 2, "val_loss": val_loss,
            "learning_rate": learning_rate,
            "wall_time": start + epoch + 1, "epoch_time": 1.0,
        })
        if val_loss < best:
            best = val_loss
            run.append_event(Event.CHECKPOINT_SAVED, epoch=epoch, step=(epoch + 1) * steps_per_epoch,
                             path=f"checkpoints/{epoch + 1:04d}-{val_loss:.4f}.keras",
                             monitor="val_loss", value=val_loss, best=True)
        if epoch and epoch % (epochs // 5 or 1) == 0:
            run.append_event(Event.LR_REDUCED, epoch=epoch, old=learning_rate, new=learning_rate / 2)
            learning_rate /= 2
        if epoch == epochs // 2:
            run.append_event(Event.RESUMED, epoch=epoch, step=epoch * steps_per_epoch)
    run.append_event(Event.EARLY_STOP, epoch=epochs - 1, best_epoch=epochs - 5, best_value=best,
                     monitor="val_accuracy", restored_best_weights=True)

    dtype = run.open_batch_log(["accuracy"])
    chunk = 200_000
    for first in range(0, batch_rows, chunk):
        step = np.arange(first, min(first + chunk, batch_rows))
        records = np.zeros(len(step), dtype=dtype)
        records["step"] = step
        records["epoch"] = np.minimum(step // steps_per_epoch, epochs - 1)
        records["batch"] = step - records["epoch"] * steps_per_epoch
        records["size"] = 32
        loss = decay[records["epoch"]] + 0.2 * rng.random(len(step))
        loss[rng.random(len(step)) < 1e-4] *= 20  # rare spikes the report must keep
        records["loss"] = loss
        records["accuracy"] = 1 - loss / 2
        run.append_batches(records)
    return run


if __name__ == "__main__":
    args = sys.argv[1:]
    make_run(args[0], *(int(a) for a in args[1:]))
    print(args[0])
