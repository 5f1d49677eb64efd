"""A loop of short fits: 20 calls of `fit(epochs=1)` on one model (a cell run
again, a hand-written schedule, keras-tuner's trials), bare, with Keras'
built-in callbacks and with `kcallbacks.standard_callbacks`, on the
backend KERAS_BACKEND names.

Each round makes a fresh model per configuration (so the first call's
tracing is in the figure, as a user waits for it) and times its 20 calls,
the configurations interleaved in this process in an order that rotates
every round. Reported per call: wall time and process CPU time (user +
system, every thread, from `resource.getrusage`), as the median over rounds
with its interquartile range, and the median of each round's own ratio to
that round's bare loop. The callback list is made once and passed to every
call, as such loops do. Before kcallbacks kept the traced train step
across fits, the suite re-traced it at every call (issue 20: 2.0x a bare
call on TensorFlow, 13x on JAX).

Usage: KERAS_BACKEND=jax python benchmarks/repeated_fits.py [--rounds 10] [--calls 20]
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
from models import mlp  # noqa: E402


def keras_suite(directory):
    return [
        keras.callbacks.CSVLogger(os.path.join(directory, "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(os.path.join(directory, "best.weights.h5"),
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
        keras.callbacks.EarlyStopping(patience=10_000),
        keras.callbacks.ReduceLROnPlateau(patience=10_000),
    ]


CONFIGURATIONS = {
    "bare": lambda directory: [],
    "keras": keras_suite,
    "kcallbacks": lambda directory: kcallbacks.standard_callbacks(
        directory, early_stopping_patience=10_000, reduce_lr_patience=10_000),
}


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_loop(name, calls, x, y, root):
    directory = tempfile.mkdtemp(dir=root)
    model = mlp((64, 128, 10), optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = CONFIGURATIONS[name](directory)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(calls):
        model.fit(x, y, batch_size=32, epochs=1, validation_split=0.2, verbose=0,
                  callbacks=callbacks)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    shutil.rmtree(directory)
    return wall / calls, cpu / calls


def quartiles(values):
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return median, q3 - q1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20)
    options = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((4000, 64), dtype=np.float32)  # 100 steps of 32, 800 to validate
    y = rng.integers(0, 10, 4000)
    names = list(CONFIGURATIONS)
    results = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        for name in names:  # warm-up: imports, first allocations
            timed_loop(name, 1, x, y, root)
        for round_ in range(options.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                results[name].append(timed_loop(name, options.calls, x, y, root))
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{options.rounds} rounds of {options.calls} fit(epochs=1) calls, 100 steps each")
    print(f"{'':12} {'wall ms/call':>18} {'cpu ms/call':>18} {'wall ratio':>11} {'cpu ratio':>10}")
    bare = results["bare"]
    for name in names:
        wall = [w * 1000 for w, _ in results[name]]
        cpu = [c * 1000 for _, c in results[name]]
        wall_ratio = statistics.median(r[0] / b[0] for r, b in zip(results[name], bare))
        cpu_ratio = statistics.median(r[1] / b[1] for r, b in zip(results[name], bare))
        (wm, wi), (cm, ci) = quartiles(wall), quartiles(cpu)
        print(f"{name:12} {wm:9.1f} (IQR {wi:5.1f}) {cm:9.1f} (IQR {ci:5.1f}) "
              f"{wall_ratio:10.3f}x {cpu_ratio:9.3f}x")


if __name__ == "__main__":
    main()
