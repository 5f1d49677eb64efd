"""Epoch time of a bare fit vs. fit with BatchLossTracker vs. fit with the
LambdaCallback pattern that appends logs["loss"] each batch.

All three run in this one process, interleaved round by round (the order
rotates each round), on the same model shape and data; the first epoch of
every fit (tracing) is left out. Prints median epoch times and the ratios
against the bare fit.

Usage: python benchmarks/batch_loss_overhead.py [--rounds 7] [--epochs 4]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcallbacks  # noqa: E402
from models import mlp  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Wall time and CPU time (all of this process's threads) per epoch. On a
    shared machine the CPU time is the steadier measure of the work added."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.cpu_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def make_model():
    return mlp(
        (64, 256, 256, 10),
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def lambda_pattern():
    losses = []
    return keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(logs["loss"])
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 64), dtype=np.float32)
    y = rng.integers(0, 10, args.samples).astype("int32")
    configs = {
        "bare fit": lambda: [],
        "BatchLossTracker": lambda: [kcallbacks.BatchLossTracker()],
        "LambdaCallback logs['loss']": lambda: [lambda_pattern()],
    }
    epoch_times = {name: [] for name in configs}
    cpu_times = {name: [] for name in configs}
    names = list(configs)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            timer = EpochTimer()
            make_model().fit(
                x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                callbacks=configs[name]() + [timer],
            )
            epoch_times[name].extend(timer.seconds[1:])
            cpu_times[name].extend(timer.cpu_seconds[1:])

    steps = -(-args.samples // args.batch_size)
    bare = statistics.median(epoch_times["bare fit"])
    bare_cpu = statistics.median(cpu_times["bare fit"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {keras.__version__} ({keras.backend.backend()})")
    print(f"{steps} steps/epoch, batch {args.batch_size}, {args.rounds} interleaved rounds, "
          f"{args.epochs - 1} timed epochs each")
    print(f"{'configuration':30s} {'wall s/epoch':>13s} {'vs bare':>8s} {'CPU s/epoch':>12s} {'vs bare':>8s}")
    for name in names:
        median = statistics.median(epoch_times[name])
        cpu = statistics.median(cpu_times[name])
        print(f"{name:30s} {median:13.4f} {median / bare:7.3f}x {cpu:12.4f} {cpu / bare_cpu:7.3f}x")


if __name__ == "__main__":
    main()
