"""Runs the tests once per Keras backend, each backend in its own process:
every test on TensorFlow, and the tests marked `all_backends` (history,
per-batch losses, kill-and-resume, reports) on JAX and PyTorch. With
--oldest-keras PYTHON, also a part of those on PyTorch with that Python,
whose environment holds the oldest Keras kcallbacks supports.

Usage: python tests/run_backends.py [--backends tensorflow,jax,torch]
                                    [--oldest-keras PYTHON] [PYTEST ARGS...]

Exits with the first failing run's status. A backend that is not installed
is a failure, not a skip: name the backends to run with --backends.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import time

# backend -> which tests run on it
SELECTIONS = {"tensorflow": [], "jax": ["-m", "all_backends"], "torch": ["-m", "all_backends"]}
# On the oldest Keras: the callbacks against Keras' own, per-batch losses, a
# kill-and-resume, pre-emption and the report.
OLDEST_KERAS_SELECTION = [
    "-m", "all_backends",
    "tests/test_history_logger.py", "tests/test_csv_logger.py", "tests/test_early_stopping.py",
    "tests/test_reduce_lr_on_plateau.py", "tests/test_model_checkpoint.py",
    "tests/test_batch_loss_tracker.py", "tests/test_backup_and_restore.py",
    "tests/test_report_content.py", "tests/test_preemption.py", "tests/test_fit_sequence.py",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(SELECTIONS),
                        help="comma-separated backends to run (default: %(default)s)")
    parser.add_argument("--oldest-keras", metavar="PYTHON",
                        help="a Python whose environment has the oldest supported Keras")
    options, pytest_args = parser.parse_known_args()
    backends = [name for name in options.backends.split(",") if name]
    unknown = sorted(set(backends) - set(SELECTIONS))
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(unknown)}")
    missing = [name for name in backends if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} (bash .ci/install installs all three)")

    runs = [(backend, backend, sys.executable, SELECTIONS[backend]) for backend in backends]
    if options.oldest_keras:
        runs.append(("oldest Keras", "torch", options.oldest_keras, OLDEST_KERAS_SELECTION))

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = []
    for name, backend, python, selection in runs:
        # The slowest tests of each pass are in the log: what to look at
        # when CI's time grows.
        command = [python, "-m", "pytest", "-q", "--durations=25", *selection, *pytest_args]
        print(f"\n=== {name}: KERAS_BACKEND={backend} {' '.join(command)}", flush=True)
        started = time.monotonic()
        status = subprocess.call(command, cwd=root, env=dict(os.environ, KERAS_BACKEND=backend))
        results.append((name, status, time.monotonic() - started))

    print("\n=== summary")
    for name, status, seconds in results:
        print(f"{name:<13} {'passed' if status == 0 else f'FAILED ({status})':<12} {seconds:6.0f} s")
    return next((status for _, status, _ in results if status), 0)


if __name__ == "__main__":
    sys.exit(main())
