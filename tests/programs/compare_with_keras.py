"""Runs each corpus program with Keras' own callbacks (CSVLogger,
ModelCheckpoint, BackupAndRestore, ReduceLROnPlateau, EarlyStopping, set
as standard_callbacks sets ours) and with the kcallbacks suite, on the
current backend, and prints what each did: completed or failed (with the
error's last line), and whether a SIGKILL at the test's moment and a
re-run ended with the uninterrupted run's weights and optimizer state.
The README's table of real programs comes from its output.

Usage: KERAS_BACKEND=jax python tests/programs/compare_with_keras.py [--keras-only] [PROGRAM...]
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import test_real_programs as corpus  # noqa: E402


def attempt(name, run_dir, env, kill_at=None):
    command = [sys.executable, os.path.join(HERE, f"{name}.py"), run_dir]
    if kill_at:
        process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=env)
        for line in process.stdout:
            if line.strip() == kill_at:
                break
        process.kill()
        process.wait()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        last = [line for line in result.stderr.strip().splitlines() if line.strip()][-1]
        return f"fails: {last[:110]}"
    return "completes"


def same_end(a, b):
    paths = [os.path.normpath(p) + ".final.npz" for p in (a, b)]
    if not all(os.path.exists(p) for p in paths):
        return "n/a"
    with np.load(paths[0]) as x, np.load(paths[1]) as y:
        if len(x.files) != len(y.files):
            return "differs"
        same = all(np.array_equal(x[k], y[k]) for k in x.files)
    return "identical" if same else "differs"


def main():
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    arguments = sys.argv[1:]
    suites = (("keras", "KC_KERAS"), ("kcallbacks", "KC_SUITE"))
    if "--keras-only" in arguments:
        arguments.remove("--keras-only")
        suites = suites[:1]
    names = arguments or corpus.program_ids()
    for name in names:
        program = corpus.PROGRAMS[name]
        if backend not in program.backends:
            print(f"{name:22} {backend:10} not run: {program.why_not_here}", flush=True)
            continue
        for who, flag in suites:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **{flag: "1"})
            if program.batch_lines:
                env["KC_PROBE_BATCHES"] = "1"
            if backend == "tensorflow":
                env["KC_FIXED_ORDER"] = "1"
            with tempfile.TemporaryDirectory() as tmp:
                whole = attempt(name, os.path.join(tmp, "whole"), env)
                resumed = "n/a"
                if program.kill_at and whole == "completes":
                    outcome = attempt(name, os.path.join(tmp, "killed"), env, program.kill_at)
                    resumed = outcome if outcome != "completes" else same_end(
                        os.path.join(tmp, "whole"), os.path.join(tmp, "killed"))
                print(f"{name:22} {backend:10} {who:10} run: {whole} | kill and re-run: {resumed}",
                      flush=True)


if __name__ == "__main__":
    main()
