"""Time added per training step by BatchLossTracker, on the backend
KERAS_BACKEND names: a bare fit vs. a fit with BatchLossTracker vs. a fit
with the LambdaCallback pattern that appends logs["loss"] each batch.

All three run in this one process, interleaved round by round (the order
rotates each round), on the same model shape and data; the first epoch of
every fit (tracing) is left out, and the defaults time 15,000 steps per
configuration (5 rounds of 3 timed epochs of 1,000 steps). Reported per
configuration: the median epoch in wall time and in process CPU time
(user + system, every thread), with its interquartile range; the median of
each round's own ratio to that round's bare fit; and the time added per
step against the bare fit, in microseconds.

What the tracker adds inside the step is counted in
tests/test_step_ops.py (3 operations with arrays); this measures what it
costs, host-side flushes included.

Usage: KERAS_BACKEND=jax python benchmarks/batch_loss_overhead.py
       [--rounds 5] [--epochs 4] [--samples 32000] [--batch-size 32]
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
        (64, 128, 10),
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def lambda_pattern():
    losses = []
    return keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(logs["loss"])
    )


def quartiles(values):
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 64), dtype=np.float32)
    y = rng.integers(0, 10, args.samples).astype("int32")
    configs = {
        "bare fit": lambda: [],
        "BatchLossTracker": lambda: [kcallbacks.BatchLossTracker()],
        "LambdaCallback logs['loss']": lambda: [lambda_pattern()],
    }
    names = list(configs)
    # name -> per round: (median wall epoch, median CPU epoch)
    rounds = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            timer = EpochTimer()
            make_model().fit(
                x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                callbacks=configs[name]() + [timer],
            )
            rounds[name].append((statistics.median(timer.seconds[1:]),
                                 statistics.median(timer.cpu_seconds[1:])))

    steps = -(-args.samples // args.batch_size)
    timed = steps * (args.epochs - 1) * args.rounds
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {keras.__version__} ({keras.backend.backend()})")
    print(f"{steps} steps/epoch, batch {args.batch_size}, {args.rounds} interleaved rounds of "
          f"{args.epochs - 1} timed epochs: {timed} timed steps per configuration")
    for measure, column in (("wall", 0), ("CPU", 1)):
        bare = [r[column] for r in rounds["bare fit"]]
        print(f"\n{measure} time")
        print(f"{'configuration':30s} {'s/epoch (IQR)':>22s} {'paired vs bare (IQR)':>24s} "
              f"{'added per step':>15s}")
        for name in names:
            values = [r[column] for r in rounds[name]]
            median, q1, q3 = quartiles(values)
            ratio, r1, r3 = quartiles([v / b for v, b in zip(values, bare)])
            added = (median - statistics.median(bare)) / steps * 1e6
            print(f"{name:30s} {median:8.4f} ({q1:.4f}-{q3:.4f}) {ratio:9.3f}x ({r1:.3f}-{r3:.3f}) "
                  f"{added:+12.1f} us")


if __name__ == "__main__":
    main()
