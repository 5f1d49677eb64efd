"""How long does a checkpoint hold up `model.fit`?

Trains a ~25M-parameter model (three Dense layers, Adam: a 302 MB
`.weights.h5`) and saves its weights at every epoch end with, in turn,
Keras' `ModelCheckpoint`, ours writing synchronously, and ours writing in the
background; and with no checkpoint, as the baseline for the fit time. They
run interleaved in one process (round after round, the order rotating), on
the same model. Two timing callbacks placed around the checkpoint callback
measure how long its `on_epoch_end` (and `on_train_end`, where a background
save is drained) keeps the fit waiting. The fit time per epoch, against the
run without checkpoints, also counts what a background write takes from
training (CPU, memory bandwidth). Each variant keeps one callback for the
whole run, as a training run does: the first background save of a callback
also allocates its host buffers, which the warm-up absorbs.

Then the same for the restore callbacks: Keras' `BackupAndRestore` against
ours, each backing up at every epoch, interleaved. Ours takes its snapshot
once the other callbacks are done with the epoch (in the next
`on_epoch_begin`, or `on_train_end` for the last one) and Keras' in
`on_epoch_end`, so the time counted for both is what `on_epoch_begin` and
`on_epoch_end` together keep the fit waiting, per epoch.

Usage: python benchmarks/checkpoint_blocking.py [--rounds 4] [--epochs 3]
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcallbacks  # noqa: E402
from kcallbacks.durable_io import atomic_write_bytes  # noqa: E402
from models import mlp  # noqa: E402

VARIANTS = ("no checkpoint", "keras", "ours sync", "ours async")


def make_model():
    return mlp((1024, 4096, 4096, 1024), optimizer=keras.optimizers.Adam(1e-4), loss="mse")


def make_checkpoint(variant, directory):
    path = os.path.join(directory, variant.replace(" ", "_"), "model.weights.h5")
    if variant == "no checkpoint":
        return keras.callbacks.Callback()  # the baseline for the fit time
    if variant == "keras":
        return keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    return kcallbacks.ModelCheckpoint(
        path, save_weights_only=True, async_save=variant == "ours async")


class Stopwatch:
    """Collects how long the callbacks between its `start` and `stop`
    callbacks take in `on_epoch_end` and `on_train_end`."""

    def __init__(self):
        self.epoch_end = []
        self.train_end = []
        self._started = None
        self.start = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: self._start(),
            on_train_end=lambda logs: self._start(),
        )
        self.stop = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: self.epoch_end.append(self._elapsed()),
            on_train_end=lambda logs: self.train_end.append(self._elapsed()),
        )

    def _start(self):
        self._started = time.perf_counter()

    def _elapsed(self):
        return time.perf_counter() - self._started


BACKUP_VARIANTS = ("keras backup", "ours backup")


class EpochStopwatch:
    """Collects, per epoch, how long the callbacks between `start` and `stop`
    take in `on_epoch_begin` and `on_epoch_end` together; and `on_train_end`."""

    def __init__(self):
        self.per_epoch = []
        self.train_end = []
        self._epoch_total = 0.0
        self._started = None
        self.start = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: self._start(),
            on_epoch_end=lambda epoch, logs: self._start(),
            on_train_end=lambda logs: self._start(),
        )
        self.stop = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: self._add(),
            on_epoch_end=lambda epoch, logs: self._close_epoch(),
            on_train_end=lambda logs: self.train_end.append(time.perf_counter() - self._started),
        )

    def _start(self):
        self._started = time.perf_counter()

    def _add(self):
        self._epoch_total += time.perf_counter() - self._started

    def _close_epoch(self):
        self._add()
        self.per_epoch.append(self._epoch_total)
        self._epoch_total = 0.0


def make_backup(variant, backup_dir):
    if variant == "keras backup":
        return keras.callbacks.BackupAndRestore(backup_dir)
    return kcallbacks.BackupAndRestore(backup_dir)


def backup_blocking(model, data, directory, rounds, epochs):
    """{variant: EpochStopwatch} over `rounds` interleaved rounds of fits."""
    watches = {variant: EpochStopwatch() for variant in BACKUP_VARIANTS}
    for round_number in range(-1, rounds):  # round -1 warms up
        shift = round_number % len(BACKUP_VARIANTS)
        for variant in BACKUP_VARIANTS[shift:] + BACKUP_VARIANTS[:shift]:
            backup_dir = os.path.join(directory, variant.replace(" ", "_"))
            # A fresh backup each fit: a backup left behind would be restored.
            shutil.rmtree(backup_dir, ignore_errors=True)
            watch = watches[variant] if round_number >= 0 else EpochStopwatch()
            callbacks = [watch.start, make_backup(variant, backup_dir), watch.stop]
            model.fit(*data, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
            print(f"backup round {round_number + 1}/{rounds}: {variant} done",
                  file=sys.stderr, flush=True)
    return watches


def time_disk_writes(directory, size, cached, durable):
    """Appends the seconds to write `size` bytes into the page cache only
    (as Keras' save leaves them) and durably (fsynced, with early writeback,
    as ours are): the floor of a durable save of the checkpoint's bytes."""
    data = np.ones(size, np.uint8)
    path = os.path.join(directory, "disk-probe")
    started = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
    cached.append(time.perf_counter() - started)
    started = time.perf_counter()
    atomic_write_bytes(path, data)
    durable.append(time.perf_counter() - started)
    os.remove(path)


def fit_with(model, data, checkpoint, epochs, stopwatch):
    x, y = data
    callbacks = [stopwatch.start, checkpoint, stopwatch.stop]
    started = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (saves) per fit")
    parser.add_argument("--steps", type=int, default=6, help="batches per epoch")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="checkpoint-blocking-", dir=args.dir)
    rng = np.random.default_rng(0)
    n = 32 * args.steps
    data = (rng.random((n, 1024), dtype=np.float32), rng.random((n, 1024), dtype=np.float32))
    model = make_model()
    # One callback per variant for the whole run, as one per training run.
    checkpoints = {variant: make_checkpoint(variant, directory) for variant in VARIANTS}
    try:
        # Warm up: trace the train function, allocate host buffers, fill caches.
        for variant in VARIANTS:
            fit_with(model, data, checkpoints[variant], 1, Stopwatch())
        size = os.path.getsize(os.path.join(directory, "keras", "model.weights.h5"))

        watches = {variant: Stopwatch() for variant in VARIANTS}
        fit_seconds = {variant: 0.0 for variant in VARIANTS}
        cached_writes, durable_writes = [], []
        for round_number in range(args.rounds):
            time_disk_writes(directory, size, cached_writes, durable_writes)
            shift = round_number % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                fit_seconds[variant] += fit_with(
                    model, data, checkpoints[variant], args.epochs, watches[variant])
                print(f"round {round_number + 1}/{args.rounds}: {variant} done",
                      file=sys.stderr, flush=True)
        backups = backup_blocking(model, data, directory, args.rounds, args.epochs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    saves = args.rounds * args.epochs
    print(f"model: {model.count_params():,} parameters; checkpoint {size / 1e6:.0f} MB "
          "(weights + Adam state)")
    print(f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python "
          f"{platform.python_version()}, Keras {keras.__version__} "
          f"({keras.backend.backend()}); {args.rounds} rounds x {args.epochs} saves per "
          f"variant, {args.steps} batches an epoch")
    print()
    baseline = fit_seconds["no checkpoint"] / saves
    print(f"{'variant':<13} {'fit blocked per save':>21} {'with train-end drain':>21} "
          f"{'vs keras':>9} {'fit s/epoch':>12} {'overhead':>9}")
    keras_median = statistics.median(watches["keras"].epoch_end)
    for variant in VARIANTS:
        watch = watches[variant]
        per_epoch = fit_seconds[variant] / saves
        if variant == "no checkpoint":
            blocked = with_drain = ratio = "-"
        else:
            median = statistics.median(watch.epoch_end)
            blocked = f"{median * 1e3:.0f} ms (median)"
            with_drain = f"{(sum(watch.epoch_end) + sum(watch.train_end)) / saves * 1e3:.0f} ms (mean)"
            ratio = f"{median / keras_median:.2f}x"
        print(f"{variant:<13} {blocked:>21} {with_drain:>21} {ratio:>9} {per_epoch:>12.2f} "
              f"{per_epoch - baseline:>+8.2f}s")

    cached, durable = statistics.median(cached_writes), statistics.median(durable_writes)
    print(f"\ndisk, the checkpoint's {size / 1e6:.0f} MB (median of {args.rounds}): into the page "
          f"cache {cached * 1e3:.0f} ms; durably (fsynced) {durable * 1e3:.0f} ms, "
          f"{size / durable / 1e9:.2f} GB/s: the floor of a durable synchronous save")
    print()
    print(f"{'restore callback':<16} {'fit blocked per epoch':>22} {'at train end':>13} {'vs keras':>9}")
    keras_backup = statistics.median(backups["keras backup"].per_epoch)
    for variant in BACKUP_VARIANTS:
        watch = backups[variant]
        median = statistics.median(watch.per_epoch)
        print(f"{variant:<16} {median * 1e3:>15.0f} ms (median) "
              f"{statistics.median(watch.train_end) * 1e3:>10.0f} ms {median / keras_backup:>8.2f}x")

if __name__ == "__main__":
    main()
