"""The suite on training programs people write, not on our own scripts.

Each program in tests/programs/ follows a public source (the keras.io
guides, keras-tuner's and Optuna's documentation; see each file's
docstring) with `kcallbacks.standard_callbacks(...)` added to its fits. Each
runs as a real subprocess on the backend under test, and is checked:

- it completes;
- the run's history is every fit's `History.history`, one row per epoch,
  numbered on across the program's fits;
- the run's per-step loss equals each step's loss recomputed from the
  running mean Keras reports after every batch (independently of
  kcallbacks: Keras' loss tracker is a mean weighted by batch size);
- `kreport build` makes its report;
- where it makes sense, a SIGKILL and a re-run end bit-identical to the
  uninterrupted program: weights and every optimizer's variables, the
  history and the per-batch log.

`PROGRAMS` says where each runs and why a check does not apply.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import kcallbacks

pytestmark = pytest.mark.all_backends

PROGRAMS_DIR = os.path.join(os.path.dirname(__file__), "programs")
KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
BACKEND = keras.backend.backend()
ALL = ("tensorflow", "jax", "torch")


class Program:
    """How a corpus program is tested.

    Args:
        backends: where Keras runs it.
        kill_at: the printed line to SIGKILL the first attempt at, or None
            with `why_no_kill` saying why a kill-and-resume does not apply.
        runs: the run directories the program writes, relative to its
            RUN_DIR ("." for RUN_DIR itself).
        records_loss: whether its train step calls compute_loss, so that
            a per-step loss is recorded.
    """

    def __init__(self, backends=ALL, kill_at=None, why_no_kill=None, runs=(".",),
                 records_loss=True, why_not_here=None, batch_lines=False):
        self.backends = backends
        self.kill_at = kill_at
        self.why_no_kill = why_no_kill
        self.runs = runs
        self.records_loss = records_loss
        self.why_not_here = why_not_here
        self.batch_lines = batch_lines


PROGRAMS = {
    "transfer_learning": Program(kill_at="EPOCH 2 4"),
    "fit_loop": Program(kill_at="EPOCH 3 0"),
    "validation_freq": Program(kill_at="EPOCH 0 2"),
    "multi_io": Program(kill_at="BATCH 0 1 5", batch_lines=True),
    "gan": Program(
        backends=("tensorflow", "torch"), kill_at="EPOCH 0 1", records_loss=False,
        why_not_here="the guides write this train_step for TensorFlow and PyTorch only",
    ),
}


def program_ids():
    return sorted(PROGRAMS)


def _env(fixed_order, batch_lines=False):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    if fixed_order:
        env["KC_FIXED_ORDER"] = "1"
    if batch_lines:
        env["KC_PROBE_BATCHES"] = "1"
    return env


def run_program(name, run_dir, fixed_order=False, timeout=600):
    program = PROGRAMS[name]
    result = subprocess.run(
        [sys.executable, os.path.join(PROGRAMS_DIR, f"{name}.py"), str(run_dir)],
        capture_output=True, text=True, timeout=timeout,
        env=_env(fixed_order, program.batch_lines),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "PROGRAM_DONE" in result.stdout
    return result


def kill_program(name, run_dir, line, fixed_order=False, timeout=600):
    """Starts the program and SIGKILLs it once it prints `line`."""
    program = PROGRAMS[name]
    process = subprocess.Popen(
        [sys.executable, os.path.join(PROGRAMS_DIR, f"{name}.py"), str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=_env(fixed_order, program.batch_lines),
    )
    seen = []
    try:
        for printed in process.stdout:
            seen.append(printed.strip())
            if printed.strip() == line:
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=timeout)
    assert line in seen, f"{name} never printed {line!r}: {seen[-5:]}"
    assert "PROGRAM_DONE" not in seen


def outputs(run_dir):
    with open(os.path.normpath(str(run_dir)) + ".out.json") as f:
        return json.load(f)


def final_state(run_dir):
    with np.load(os.path.normpath(str(run_dir)) + ".final.npz") as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def needs_backend(name):
    program = PROGRAMS[name]
    if BACKEND not in program.backends:
        pytest.skip(f"{name} does not run on {BACKEND}: {program.why_not_here}")


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Each program run once, uninterrupted, as the guide runs it."""
    made = {}

    def reference(name, fixed_order=False):
        key = (name, fixed_order)
        if key not in made:
            run_dir = tmp_path_factory.mktemp(name) / ("fixed" if fixed_order else "run")
            result = run_program(name, run_dir, fixed_order=fixed_order)
            made[key] = (run_dir, result)
        return made[key]

    return reference


def step_losses_from_running_means(probe, batches):
    """Each step's own loss from the running means Keras reported after
    each batch of each epoch: mean_b * samples_b - mean_(b-1) *
    samples_(b-1), over the batch's size."""
    assert len(probe) == len(batches)
    losses, seen, previous = [], 0.0, 0.0
    for (fit, epoch, batch, mean), size in zip(probe, batches["size"]):
        if batch == 0:
            seen, previous = 0.0, 0.0
        total = mean * (seen + size)
        losses.append((total - previous * seen) / size)
        seen, previous = seen + size, mean
    return np.array(losses)


def concatenated(histories, key):
    return [value for history in histories for value in history.get(key, [])]


@pytest.mark.parametrize("name", program_ids())
def test_program_completes_with_exact_history_and_step_losses(name, reference_runs, tmp_path):
    needs_backend(name)
    program = PROGRAMS[name]
    run_dir, result = reference_runs(name)
    out = outputs(run_dir)
    for relative in program.runs:
        run = kcallbacks.load_run(os.path.join(run_dir, relative))
        assert run.warnings == []
        assert run.manifest["status"] in ("finished", "stopped_early")
        histories = out["histories"]
        epochs = sum(len(h["loss" if "loss" in h else next(iter(h))]) for h in histories)
        assert run.history["epoch"].tolist() == list(range(epochs))
        for key in set().union(*histories):
            expected = concatenated(histories, key)
            column = run.history[key]
            if key.startswith("val_"):
                column = column.dropna()  # epochs without validation
            np.testing.assert_array_equal(column.to_numpy(), np.array(expected, float), err_msg=key)

        batches = run.batches
        if program.records_loss:
            expected = step_losses_from_running_means(out["probe"], batches)
            np.testing.assert_allclose(batches["loss"], expected, rtol=1e-4, atol=1e-5)
            assert batches["step"].tolist() == list(range(len(batches)))
            # One epoch number per history row, in step order.
            assert sorted(set(batches["epoch"])) == list(range(epochs))
            assert batches["epoch"].is_monotonic_increasing
        else:
            assert len(batches) == 0
            assert "does not call compute_loss" in result.stderr

        report = tmp_path / f"{name}.html"
        built = subprocess.run([KREPORT, "build", str(run.path), "-o", str(report)],
                               capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        assert report.stat().st_size > 10_000


@pytest.mark.parametrize("name", program_ids())
def test_sigkill_and_rerun_end_identical(name, reference_runs, tmp_path):
    needs_backend(name)
    program = PROGRAMS[name]
    if program.kill_at is None:
        pytest.skip(program.why_no_kill)
    # TensorFlow's array shuffling draws from op-level random state that no
    # backup restores (see BackupAndRestore): a fixed order there.
    fixed_order = BACKEND == "tensorflow"
    reference_dir, _ = reference_runs(name, fixed_order=fixed_order)
    run_dir = tmp_path / "run"
    kill_program(name, run_dir, program.kill_at, fixed_order=fixed_order)
    rerun = run_program(name, run_dir, fixed_order=fixed_order)
    assert "Traceback" not in rerun.stderr

    for expected, got in zip(final_state(reference_dir), final_state(run_dir), strict=True):
        np.testing.assert_array_equal(got, expected)
    for relative in program.runs:
        reference = kcallbacks.load_run(os.path.join(reference_dir, relative))
        resumed = kcallbacks.load_run(os.path.join(run_dir, relative))
        assert resumed.warnings == []
        columns = [c for c in reference.history.columns if c not in ("wall_time", "epoch_time")]
        np.testing.assert_array_equal(resumed.history[columns].to_numpy(),
                                      reference.history[columns].to_numpy())
        assert list(resumed.history.columns) == list(reference.history.columns)
        np.testing.assert_array_equal(resumed.batches.to_records(index=False),
                                      reference.batches.to_records(index=False))
        assert resumed.manifest["status"] == reference.manifest["status"]
