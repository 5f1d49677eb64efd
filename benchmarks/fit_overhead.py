"""What the user waits for: a whole fit's wall time with the callbacks, over
a bare fit and over Keras' built-in callbacks doing the same jobs.

Two workloads, each run interleaved in this one process (the order rotates
every round), on the same model shape and data:

- "small": an MLP (64-128-10), batch 32, 300 steps per epoch, with
  validation. Keras' suite: CSVLogger, ModelCheckpoint (best weights),
  BackupAndRestore, EarlyStopping, ReduceLROnPlateau, and a LambdaCallback
  appending logs["loss"] each batch. Ours: `kcallbacks.standard_callbacks`
  (history, per-batch loss, best checkpoints, backup every epoch, early
  stopping, LR plateau), both with a patience that never stops the fit.
- "big": a 25M-parameter MLP (2048-4096-4096-10, Adam), 10 steps per epoch,
  a checkpoint and a backup every epoch. Keras: ModelCheckpoint +
  BackupAndRestore. Ours: ModelCheckpoint(async_save=True) +
  BackupAndRestore (background writes, the default), which also persist
  the optimizer state.

Each fit is timed end to end, background writes included (ours finish
before `fit` returns), after a one-epoch warm-up fit of each configuration
that is not timed. Two figures: the fit's wall time divided by its epochs
(each fit builds a fresh model, so this includes tracing and the callbacks'
first allocations), and the median steady epoch (from the second on, each
from its begin to the next one's, the last to the return of `fit`). It also measures the disk's
bandwidth with fsync, the floor for the big workload's writes.

Each figure comes as wall time and as process CPU time (user + system,
every thread, from `resource.getrusage`), which varies far less on a shared
machine, with medians and IQRs over the rounds and the median of each
round's own ratio to its bare fit. The workload of repeated short fits (20
calls of `fit(epochs=1)`) is benchmarks/repeated_fits.py.

Usage: python benchmarks/fit_overhead.py [--workloads small,big] [--rounds 10]
"""

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcallbacks  # noqa: E402
from models import EpochClock, mlp  # noqa: E402

NEVER = 10_000  # a patience that never stops a benchmark fit


def keras_small_suite(directory):
    losses = []
    return [
        keras.callbacks.CSVLogger(os.path.join(directory, "history.csv")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(directory, "best.weights.h5"), save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
        keras.callbacks.EarlyStopping(patience=NEVER),
        keras.callbacks.ReduceLROnPlateau(patience=NEVER),
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(logs["loss"])),
    ]


def ours_small_suite(directory):
    return kcallbacks.standard_callbacks(
        directory, early_stopping_patience=NEVER, reduce_lr_patience=NEVER,
    )


def keras_big_suite(directory):
    return [
        keras.callbacks.ModelCheckpoint(
            os.path.join(directory, "model.weights.h5"), save_weights_only=True,
        ),
        keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
    ]


def ours_big_suite(directory):
    return [
        kcallbacks.ModelCheckpoint(
            os.path.join(directory, "model.weights.h5"), save_weights_only=True,
            async_save=True,
        ),
        kcallbacks.BackupAndRestore(os.path.join(directory, "backup")),
    ]


WORKLOADS = {
    "small": dict(
        model=lambda: mlp((64, 128, 10), optimizer="adam", metrics=["accuracy"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        samples=12000, features=64, classes=10, batch_size=32, epochs=5, validation=0.2,
        suites={"bare fit": lambda d: [], "keras built-ins": keras_small_suite,
                "kcallbacks": ours_small_suite},
    ),
    "big": dict(
        model=lambda: mlp((2048, 4096, 4096, 10), optimizer="adam",
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        samples=640, features=2048, classes=10, batch_size=64, epochs=5, validation=0.0,
        suites={"bare fit": lambda d: [], "keras built-ins": keras_big_suite,
                "kcallbacks": ours_big_suite},
    ),
}


def cpu_seconds():
    """User + system CPU time of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_fit(spec, suite, x, y, directory, epochs):
    """(whole fit's seconds per epoch, median steady epoch in seconds, the
    whole fit's CPU seconds per epoch): an epoch runs from its begin to the
    next one's, the last to the return of `fit` (background writes
    finished); the first epoch (tracing, first allocations of the callbacks'
    buffers) is left out of the second."""
    model = spec["model"]()
    clock = EpochClock()
    cpu_started, started = cpu_seconds(), time.perf_counter()
    model.fit(
        x, y, batch_size=spec["batch_size"], epochs=epochs, verbose=0, shuffle=False,
        validation_split=spec["validation"], callbacks=suite(directory) + [clock],
    )
    ended, cpu_ended = time.perf_counter(), cpu_seconds()
    epochs_ends = clock.starts[1:] + [ended]
    steady = [end - start for start, end in zip(clock.starts[1:], epochs_ends[1:])]
    return ((ended - started) / epochs, statistics.median(steady) if steady else None,
            (cpu_ended - cpu_started) / epochs)


def run_workload(name, rounds):
    spec = WORKLOADS[name]
    rng = np.random.default_rng(0)
    # Learnable data: a linear map's argmax, so the callbacks see real curves.
    x = rng.standard_normal((spec["samples"], spec["features"]), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((spec["features"], spec["classes"])), axis=1)
    configs = list(spec["suites"])
    whole = {config: [] for config in configs}
    steady = {config: [] for config in configs}
    cpu = {config: [] for config in configs}
    for round_index in range(rounds + 1):  # round 0 warms up, untimed
        order = configs[round_index % len(configs):] + configs[: round_index % len(configs)]
        for config in order:
            directory = tempfile.mkdtemp(prefix="kcallbacks-bench-")
            try:
                epochs = 1 if round_index == 0 else spec["epochs"]
                per_epoch, steady_epoch, cpu_per_epoch = timed_fit(
                    spec, spec["suites"][config], x, y, directory, epochs)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            if round_index:
                whole[config].append(per_epoch)
                steady[config].append(steady_epoch)
                cpu[config].append(cpu_per_epoch)

    steps = -(-int(spec["samples"] * (1 - spec["validation"])) // spec["batch_size"])
    print(f"\n{name}: {steps} steps/epoch, batch {spec['batch_size']}, {spec['epochs']} epochs "
          f"per fit, {rounds} interleaved rounds (median, and IQR over rounds)")
    for label, times in (("whole fit / epochs, wall", whole),
                         ("whole fit / epochs, process CPU (every thread)", cpu),
                         ("steady epoch (2nd on), wall", steady)):
        print(f"{label}:")
        report(times, configs)


def report(per_epoch, configs):
    """Medians over rounds, and the median of each round's own ratio to the
    bare fit of that round (steadier: a round's configurations run back to
    back, so slow stretches of the machine hit them alike)."""
    bare = statistics.median(per_epoch["bare fit"])
    builtins = statistics.median(per_epoch["keras built-ins"])
    print(f"  {'configuration':17s} {'s/epoch':>8s} {'IQR':>15s} {'vs bare':>8s} "
          f"{'added s/epoch':>14s} {'vs keras':>9s} {'paired vs bare (IQR)':>22s}")
    for config in configs:
        times = per_epoch[config]
        median = statistics.median(times)
        added = median - bare
        vs_keras = "" if config == "bare fit" else (
            f"{median / builtins:8.3f}x" if config != "keras built-ins" else "   1.000x")
        ratios = [t / b for t, b in zip(times, per_epoch["bare fit"])]
        low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
        paired = f"{statistics.median(ratios):.3f}x ({low:.3f}-{high:.3f})"
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
        print(f"  {config:17s} {median:8.3f} {q1:7.3f}-{q3:<7.3f} "
              f"{median / bare:7.3f}x {added:+13.3f}s {vs_keras:>9s} {paired:>22s}")
    ours_added = statistics.median(per_epoch["kcallbacks"]) - bare
    keras_added = builtins - bare
    if keras_added > 0:
        print(f"  slowdown added by kcallbacks / added by Keras' built-ins: "
              f"{ours_added / keras_added:.2f}x")


def disk_bandwidth(megabytes=256):
    """MB/s of writing a file and fsyncing it, in the temporary directory."""
    block = np.random.default_rng(0).bytes(1 << 20)
    with tempfile.NamedTemporaryFile(prefix="kcallbacks-disk-") as f:
        started = time.perf_counter()
        for _ in range(megabytes):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        return megabytes / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="small,big")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {keras.__version__} ({keras.backend.backend()}); "
          f"disk with fsync: {disk_bandwidth():.0f} MB/s")
    for name in args.workloads.split(","):
        run_workload(name, args.rounds)


if __name__ == "__main__":
    main()
