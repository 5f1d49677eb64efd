"""Runs tests/scripts/train_jax_multiprocess.py as N real processes of one JAX
distributed job on loopback, reads each process's output in threads, and
kills or signals them at chosen moments.

Every wait is bounded: a process can sit in a collective, or in JAX's
shutdown barrier, for minutes after a partner died. When a bound passes,
every process is SIGKILLed and the caller fails with the last lines of each
process's stderr. No process outlives a harness call.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_jax_multiprocess.py")
# A small run (startup, a dozen short epochs, shutdown) takes ~10-20 s per
# process on two shared cores; the bound is for a hung job, not a slow one.
RUN_TIMEOUT = 240
# Once one process failed, how long the others get to exit on their own.
FAILURE_GRACE = 20
# Startup lines of every process's stderr, left out of failure messages.
NOISE = ("oneDNN custom operations", "All log messages before absl::InitializeLog")


class JobFailed(AssertionError):
    """A job did not do what it was asked to, or passed a time bound."""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run_dir, process_id, num_processes, port, epochs, *extra):
    return [sys.executable, SCRIPT, str(run_dir), str(process_id), str(num_processes),
            str(port), str(epochs), *extra]


def scratch_dir(run_dir):
    """The processes' TMPDIR, beside the run directory: where a non-writing
    process keeps its private scratch directory (kcallbacks-non-chief-*),
    so that one left by a SIGKILL stays in the test's temporary directory."""
    return os.path.join(os.path.dirname(os.path.abspath(str(run_dir))), "tmp")


def _environment(run_dir):
    env = dict(os.environ)
    env["TMPDIR"] = scratch_dir(run_dir)
    os.makedirs(env["TMPDIR"], exist_ok=True)
    env["KERAS_BACKEND"] = "jax"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # One CPU device per process, whatever the caller's XLA_FLAGS say.
    env.pop("XLA_FLAGS", None)
    return env


class Job:
    """N processes of one run, started at once, their stdout and stderr
    collected line by line (stdout lines also fed to `on_line`)."""

    def __init__(self, run_dir, num_processes, epochs, *extra, on_line=None):
        self.port = free_port()
        self.lines = [[] for _ in range(num_processes)]
        self.errors = [[] for _ in range(num_processes)]
        self.started = time.monotonic()
        self.exited_at = [None] * num_processes
        self._on_line = on_line
        self._lock = threading.Lock()
        self.processes = []
        self._threads = []
        try:
            for i in range(num_processes):
                process = subprocess.Popen(
                    command(run_dir, i, num_processes, self.port, epochs, *extra),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(run_dir),
                )
                self.processes.append(process)
                for stream, sink in ((process.stdout, self.lines[i]), (process.stderr, self.errors[i])):
                    thread = threading.Thread(target=self._read, args=(i, stream, sink), daemon=True)
                    thread.start()
                    self._threads.append(thread)
        except BaseException:
            self.kill_all()
            raise

    def _read(self, index, stream, sink):
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                sink.append(line)
            if sink is self.lines[index] and self._on_line is not None:
                self._on_line(index, line)
        if sink is self.lines[index]:
            # stdout closed: the process is gone (or closing); note when.
            self.processes[index].wait()
            self.exited_at[index] = time.monotonic()

    def kill_all(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait()
        for thread in self._threads:
            thread.join(timeout=10)

    def wait_all(self, timeout, grace_after_failure=None):
        """Waits until every process exited, at most `timeout` seconds from
        now; then kills all and raises JobFailed. With `grace_after_failure`,
        once a process exited with a non-zero status the others get that
        many seconds more (a partner's death leaves them stuck), and so does
        one that printed a traceback (it may hang in JAX's shutdown barrier)."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.processes):
            if self.failed() and grace_after_failure is not None:
                deadline = min(deadline, time.monotonic() + grace_after_failure)
                grace_after_failure = None
            if time.monotonic() > deadline:
                self.kill_all()
                raise JobFailed(f"not every process exited in time (bound {timeout} s, "
                                f"or a partner failed)\n{self.describe()}")
            time.sleep(0.05)
        for thread in self._threads:
            thread.join(timeout=10)
        return [process.returncode for process in self.processes]

    def failed(self):
        """The processes that exited with a non-zero status or printed a
        traceback."""
        with self._lock:
            return [i for i, p in enumerate(self.processes) if p.poll() not in (None, 0)
                    or "Traceback (most recent call last):" in self.errors[i]]

    @property
    def returncodes(self):
        return [process.returncode for process in self.processes]

    def describe(self, tail=25):
        parts = []
        for i, process in enumerate(self.processes):
            status = process.poll()
            parts.append(f"--- process {i} (exit status {status}); last stdout: "
                         f"{self.lines[i][-3:]}; last stderr lines:")
            errors = [line for line in self.errors[i] if not any(n in line for n in NOISE)]
            parts.extend("    " + line for line in errors[-tail:])
        return "\n".join(parts)


def run_all_to_completion(run_dir, num_processes, epochs, *extra, timeout=RUN_TIMEOUT):
    """Runs the job to its end; every process must exit 0 and print
    TRAINING_DONE. Returns each process's stdout lines."""
    job = Job(run_dir, num_processes, epochs, *extra)
    try:
        codes = job.wait_all(timeout, grace_after_failure=FAILURE_GRACE)
        if codes != [0] * num_processes or not all("TRAINING_DONE" in lines for lines in job.lines):
            raise JobFailed(f"the run did not finish cleanly: exit statuses {codes}\n{job.describe()}")
        return job.lines
    finally:
        job.kill_all()


def _when(job_args, predicate, timeout, act):
    """Starts a job; once any process prints a line satisfying
    `predicate(process_index, line)`, calls `act(job, index)` once (from
    the main thread). Fails if every process exited first, if `timeout`
    seconds pass, or FAILURE_GRACE seconds after a process failed.
    Returns (job, index that matched)."""
    matched = threading.Event()
    which = []

    def on_line(index, line):
        if matched.is_set():
            return
        try:
            hit = predicate(index, line)
        except BaseException as error:  # raised again on the main thread
            which.append(error)
            matched.set()
            return
        if hit:
            which.append(index)
            matched.set()

    run_dir, num_processes, epochs, *extra = job_args
    job = Job(run_dir, num_processes, epochs, *extra, on_line=on_line)
    deadline, failed_at = time.monotonic() + timeout, None
    while not matched.wait(timeout=0.2):
        if failed_at is None and job.failed():
            failed_at = time.monotonic()
        why = ("every process exited" if all(p.poll() is not None for p in job.processes)
               else f"{timeout} s passed" if time.monotonic() > deadline
               else "a process failed" if failed_at and time.monotonic() > failed_at + FAILURE_GRACE
               else None)
        if why:
            job.kill_all()
            raise JobFailed(f"the moment never came ({why})\n{job.describe()}")
    if isinstance(which[0], BaseException):
        job.kill_all()
        raise which[0]
    act(job, which[0])
    return job, which[0]


def kill_all_when(run_dir, num_processes, epochs, predicate, *extra, delay=0.0, timeout=RUN_TIMEOUT):
    """Starts the job and SIGKILLs every process once any process prints a
    line satisfying `predicate(process_index, line)` (after `delay` s).
    Returns each process's stdout lines; fails if the run finished first."""
    def act(job, index):
        time.sleep(delay)
        job.kill_all()

    job = None
    try:
        job, _ = _when((run_dir, num_processes, epochs, *extra), predicate, timeout, act)
    finally:
        if job is not None:
            job.kill_all()
    if any("TRAINING_DONE" in lines for lines in job.lines):
        raise JobFailed("the run finished before it could be killed")
    return job.lines


def signal_one_when(run_dir, num_processes, epochs, predicate, target, sig, *extra,
                    exit_timeout=60, timeout=RUN_TIMEOUT):
    """Starts the job; once any process prints a line satisfying `predicate`,
    sends `sig` to process `target` only. Every process must then exit
    within `exit_timeout` s (else all are killed: JobFailed). Returns
    (exit statuses, seconds from the signal to each exit, stdout lines,
    stderr lines), per process."""
    sent = []

    def act(job, index):
        sent.append(time.monotonic())
        job.processes[target].send_signal(sig)

    job = None
    try:
        job, _ = _when((run_dir, num_processes, epochs, *extra), predicate, timeout, act)
        job.wait_all(exit_timeout)
    finally:
        if job is not None:
            job.kill_all()
    seconds = [(at or time.monotonic()) - sent[0] for at in job.exited_at]
    return job.returncodes, seconds, job.lines, job.errors


def final_weights(run_dir, process_id=0):
    with np.load(f"{os.path.normpath(str(run_dir))}.final.{process_id}.npz") as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k[1:]))]


def batch_lines(lines):
    return [line for line in lines if line.startswith("BATCH ")]


def run_files(run_dir):
    """Every file under `run_dir`, relative to it, sorted."""
    found = []
    for root, _, files in os.walk(run_dir):
        for name in files:
            found.append(os.path.relpath(os.path.join(root, name), run_dir))
    return sorted(found)
