"""A synthetic study: many run directories with hyperparameters, as a sweep
leaves them.

`distinct` runs are written through the RunDirectory API (see
`synthetic_run.make_run`; each has its own noise), and the study's runs are
copies of them, each given its own hyperparameters in its manifest (through
the API too): writing a thousand runs epoch by epoch, every row made durable,
would take minutes, and the page does not care whether two runs' curves
repeat. A few runs are left "running" with no process behind them
(interrupted) and a few are pre-empted.

Usage: python benchmarks/synthetic_study.py ROOT [RUNS] [EPOCHS] [BATCH_ROWS]
"""

import os
import shutil
import sys

from kcallbacks.run_directory import RunDirectory
from synthetic_run import make_run

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
WIDTHS = (32, 64, 128, 256)
OPTIMIZERS = ("adam", "sgd", "rmsprop")


def hparams_of(index):
    return {
        "learning_rate": LEARNING_RATES[index % len(LEARNING_RATES)],
        "units": WIDTHS[(index // len(LEARNING_RATES)) % len(WIDTHS)],
        "optimizer": OPTIMIZERS[index % len(OPTIMIZERS)],
        "dropout": round(0.05 * (index % 7), 2),
        "batch_size": 64,
    }


def make_study(root, runs=1000, epochs=100, batch_rows=10_000, distinct=20):
    """Writes the study under `root` (runs in `root/sweep-NNNN`); returns
    their paths."""
    templates = os.path.join(root, ".templates")
    for seed in range(min(distinct, runs)):
        make_run(os.path.join(templates, str(seed)), epochs=epochs, batch_rows=batch_rows, seed=seed)
    paths = []
    for index in range(runs):
        path = os.path.join(root, f"sweep-{index:04d}")
        shutil.copytree(os.path.join(templates, str(index % distinct)), path)
        run = RunDirectory(path)
        changes = {"name": f"sweep-{index:04d}", "hparams": hparams_of(index),
                   "hparams_automatic": ["batch_size"]}
        if index % 97 == 13:
            changes["status"] = "running"  # its process is gone: interrupted
        elif index % 89 == 7:
            changes["status"] = "preempted"
        run.update_manifest(**changes)
        paths.append(path)
    shutil.rmtree(templates)
    return paths


if __name__ == "__main__":
    args = sys.argv[1:]
    make_study(args[0], *(int(a) for a in args[1:]))
    print(args[0])
