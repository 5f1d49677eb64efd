"""Runs tests/scripts/train_resumable.py as real subprocesses, SIGKILLs them
at chosen moments, and restarts them until they finish."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_resumable.py")


def command(run_dir, epochs, save_freq, *extra):
    return [sys.executable, SCRIPT, str(run_dir), str(epochs), str(save_freq), *extra]


def run_to_completion(run_dir, epochs, save_freq, *extra):
    result = subprocess.run(command(run_dir, epochs, save_freq, *extra), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINING_DONE" in result.stdout
    return result.stdout


def kill_when_line(run_dir, epochs, save_freq, predicate, *extra, delay=0.0):
    """Starts a run, SIGKILLs it once a printed line satisfies `predicate`
    (after `delay` seconds). Returns the lines seen; fails if it finished."""
    process = subprocess.Popen(command(run_dir, epochs, save_freq, *extra), stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line.strip())
            if predicate(line.strip()):
                time.sleep(delay)
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert "TRAINING_DONE" not in seen, "the run finished before it could be killed"
    return seen


def kill_during_snapshot_write(run_dir, epochs, save_freq, *extra, timeout=120):
    """Starts a run and SIGKILLs it while a snapshot is being written (a
    temporary snapshot directory exists in the backup directory)."""
    process = subprocess.Popen(command(run_dir, epochs, save_freq, *extra),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = os.path.join(str(run_dir), "backup", ".snapshot-*.tmp-*")
    # A temporary left by an earlier kill is not this run's write.
    earlier = set(glob.glob(pattern))
    killed_in_write = False
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if set(glob.glob(pattern)) - earlier:
                process.send_signal(signal.SIGKILL)
                killed_in_write = True
                break
            time.sleep(0.0005)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert killed_in_write, "no snapshot write was caught in progress"
    return sorted(set(glob.glob(pattern)) - earlier)


def final_weights(run_dir):
    with np.load(os.path.normpath(str(run_dir)) + ".final.npz") as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k[1:]))]


def signal_when_line(run_dir, epochs, save_freq, predicate, signals, *extra, timeout=180):
    """Starts a run and, once a printed line satisfies `predicate`, sends it
    `signals` (one after the other, as fast as possible). Returns (exit
    status, seconds from the first signal to the exit, stdout lines, stderr)."""
    process = subprocess.Popen(command(run_dir, epochs, save_freq, *extra),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, sent = [], None
    try:
        for line in process.stdout:
            seen.append(line.strip())
            if sent is None and predicate(line.strip()):
                sent = time.monotonic()
                for sig in signals:
                    process.send_signal(sig)
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    exited = time.monotonic()
    assert sent is not None, "the moment to signal never came"
    return process.returncode, exited - sent, seen, process.stderr.read()


def batch_lines(lines):
    """The `BATCH e b` lines: one per step the attempt trained (or passed over)."""
    return [line for line in lines if line.startswith("BATCH ")]
