"""Small run directories written through the RunDirectory API (no Keras), for
tests that damage or decorate a run."""

import numpy as np

from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import utc_now


def small_run(path, epochs=5, steps_per_epoch=4):
    """A finished run: `epochs` epochs of loss/accuracy with validation, a
    per-batch log, and a checkpoint event per epoch."""
    run = RunDirectory(path, create=True)
    run.update_manifest(
        status="finished", ended=utc_now(),
        attempts=[{"started": utc_now(), "initial_epoch": 0, "ended": utc_now()}],
        fit_params={"epochs": epochs, "steps": steps_per_epoch, "verbose": 0},
        callbacks=[{"class": "kcallbacks.EarlyStopping", "config": {"monitor": "val_accuracy", "mode": "max"}}],
    )
    for epoch in range(epochs):
        run.append_history({
            "epoch": epoch, "loss": 1.0 / (epoch + 1), "accuracy": 0.5 + epoch / 20,
            "val_loss": 1.2 / (epoch + 1), "val_accuracy": 0.45 + epoch / 20,
            "learning_rate": 0.01, "wall_time": 1_700_000_000.0 + epoch, "epoch_time": 1.0,
        })
        run.append_event("checkpoint_saved", epoch=epoch, step=(epoch + 1) * steps_per_epoch,
                         path=f"checkpoints/{epoch + 1:02d}.keras", monitor="val_accuracy",
                         value=0.45 + epoch / 20, best=True)
    records = np.zeros(epochs * steps_per_epoch, dtype=run.open_batch_log())
    records["step"] = np.arange(len(records))
    records["epoch"] = records["step"] // steps_per_epoch
    records["batch"] = records["step"] % steps_per_epoch
    records["size"] = 32
    records["loss"] = np.linspace(1.0, 0.2, len(records))
    run.append_batches(records)
    return run
