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
# TensorFlow's array shuffling draws from op-level random state that no
# backup restores (see BackupAndRestore): there the programs run with a
# fixed order (one reference run serves both tests).
FIXED_ORDER = BACKEND == "tensorflow"
ATTEMPT_EVENTS = ("resumed", "resume_skipped", "history_truncated", "batches_truncated",
                  "preempted")


class Program:
    """How a corpus program is tested.

    Args:
        backends: where Keras runs it.
        kill_at: the printed line to SIGKILL the first attempt at, or None
            with `why_no_kill` saying why a kill-and-resume does not apply.
        records_loss: whether its train step calls compute_loss, so that
            a per-step loss is recorded.
    """

    def __init__(self, backends=ALL, kill_at=None, why_no_kill=None,
                 records_loss=True, why_not_here=None, batch_lines=False):
        self.backends = backends
        self.kill_at = kill_at
        self.why_no_kill = why_no_kill
        self.records_loss = records_loss
        self.why_not_here = why_not_here
        self.batch_lines = batch_lines


PROGRAMS = {
    "transfer_learning": Program(kill_at="EPOCH 1 4"),
    "fit_loop": Program(kill_at="EPOCH 3 0"),
    "validation_freq": Program(kill_at="EPOCH 0 2"),
    "multi_io": Program(kill_at="BATCH 0 1 5", batch_lines=True),
    "gan": Program(
        backends=("tensorflow", "torch"), kill_at="EPOCH 0 1", records_loss=False,
        why_not_here="the guides write this train_step for TensorFlow and PyTorch only",
    ),
    "add_loss_layer": Program(kill_at="EPOCH 0 1"),
    "endpoint_layer": Program(kill_at="EPOCH 0 1"),
    "custom_loss_metric": Program(
        backends=("tensorflow", "torch"), kill_at="EPOCH 0 1",
        why_not_here="the guide's metric returns its variable from result(), which "
        "Keras cannot trace on JAX (it fails without kcallbacks too)",
    ),
    "sample_class_weights": Program(kill_at="EPOCH 1 0"),
    "tf_data": Program(
        why_no_kill="with steps_per_epoch an epoch goes on drawing from the previous "
        "epoch's iterator, whose position no process restart restores (Keras' "
        "BackupAndRestore says the same)",
    ),
    "py_dataset": Program(kill_at="EPOCH 0 1"),
    "mixed_precision": Program(kill_at="EPOCH 0 1"),
    "keras_tuner_search": Program(kill_at="EPOCH 1 1"),
    "optuna_objective": Program(
        why_no_kill="an in-memory Optuna study does not outlive its process: a re-run "
        "is a new study (its trials' runs are new runs)",
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


@pytest.mark.parametrize("name", program_ids())
def test_keras_itself_fails_where_a_program_is_marked_off(name, tmp_path):
    """A program marked off a backend fails there without kcallbacks too:
    Keras cannot run it (when Keras can, the mark must go)."""
    program = PROGRAMS[name]
    if BACKEND in program.backends:
        pytest.skip(f"{name} runs on {BACKEND}")
    result = subprocess.run(
        [sys.executable, os.path.join(PROGRAMS_DIR, f"{name}.py"), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, env=dict(_env(False), KC_BARE="1"),
    )
    assert result.returncode != 0 and "PROGRAM_DONE" not in result.stdout
    assert "kcallbacks" not in result.stderr


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


def runs_of(out):
    """{run directory (relative): [the indices of its fits]}."""
    runs = {}
    for fit, relative in enumerate(out["runs"]):
        runs.setdefault(relative, []).append(fit)
    return runs


@pytest.mark.parametrize("name", program_ids())
def test_program_completes_with_exact_history_and_step_losses(name, reference_runs, tmp_path):
    needs_backend(name)
    program = PROGRAMS[name]
    run_dir, result = reference_runs(name, fixed_order=FIXED_ORDER)
    out = outputs(run_dir)
    for relative, fits in runs_of(out).items():
        run = kcallbacks.load_run(os.path.join(run_dir, relative))
        assert run.warnings == []
        assert run.manifest["status"] in ("finished", "stopped_early")
        histories = [out["histories"][fit] for fit in fits]
        epochs = sum(len(next(iter(h.values()))) for h in histories)
        assert run.history["epoch"].tolist() == list(range(epochs))
        for key in set().union(*histories):
            expected = concatenated(histories, key)
            column = run.history[key]
            if key.startswith("val_"):
                column = column.dropna()  # epochs without validation
            np.testing.assert_array_equal(column.to_numpy(), np.array(expected, float), err_msg=key)

        batches = run.batches
        if program.records_loss:
            probe = [row for row in out["probe"] if row[0] in fits]
            expected = step_losses_from_running_means(probe, batches)
            np.testing.assert_allclose(batches["loss"], expected, rtol=1e-4, atol=1e-5)
            assert batches["step"].tolist() == list(range(len(batches)))
            # One epoch number per history row, in step order.
            assert sorted(set(batches["epoch"])) == list(range(epochs))
            assert batches["epoch"].is_monotonic_increasing
        else:
            assert len(batches) == 0
            assert "does not call compute_loss" in result.stderr

        report = tmp_path / "report.html"
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
    fixed_order = FIXED_ORDER
    reference_dir, _ = reference_runs(name, fixed_order=fixed_order)
    run_dir = tmp_path / "run"
    kill_program(name, run_dir, program.kill_at, fixed_order=fixed_order)
    rerun = run_program(name, run_dir, fixed_order=fixed_order)
    assert "Traceback" not in rerun.stderr

    if os.path.exists(str(reference_dir) + ".final.npz"):
        for expected, got in zip(final_state(reference_dir), final_state(run_dir), strict=True):
            np.testing.assert_array_equal(got, expected)
    reference_out = outputs(reference_dir)
    assert outputs(run_dir)["runs"] == reference_out["runs"]
    for key in ("scores", "hyperparameters", "values"):
        assert outputs(run_dir).get(key) == reference_out.get(key), key
    for relative in runs_of(reference_out):
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
        # The training's events once each, as uninterrupted (the re-run adds
        # only events about the attempts themselves).
        assert training_events(resumed) == training_events(reference)


def training_events(run):
    events = run.events
    if events.empty:
        return []
    events = events[~events["type"].isin(ATTEMPT_EVENTS)]
    epochs = events["epoch"] if "epoch" in events else [None] * len(events)
    return [(kind, None if epoch is None or epoch != epoch else int(epoch))
            for kind, epoch in zip(events["type"], epochs)]


def test_keras_tuner_trials_are_runs_of_their_own(reference_runs):
    """keras-tuner deep-copies the callbacks for every trial; each trial's
    training is its own run, named after the trial, with its id and
    hyperparameter values in the manifest."""
    needs_backend("keras_tuner_search")
    run_dir, _ = reference_runs("keras_tuner_search", fixed_order=FIXED_ORDER)
    out = outputs(run_dir)
    assert len(out["runs"]) == 3 == len(set(out["runs"]))
    for relative in out["runs"]:
        run = kcallbacks.load_run(os.path.join(run_dir, relative))
        trial = run.manifest["trial"]
        assert relative == os.path.join("runs", f"trial_{trial['id']}")
        assert trial["hyperparameters"] == out["hyperparameters"][trial["id"]]
        assert trial["tuner"] == "RandomSearch"
        # Its backup and checkpoints moved with it.
        assert os.path.isdir(os.path.join(run.path, "backup"))
        assert os.path.exists(os.path.join(run.path, "checkpoints", "best.weights.h5"))
        # The trial's values are the run's hyperparameters, beside those
        # every fit records.
        hparams = run.manifest["hparams"]
        assert {k: hparams[k] for k in trial["hyperparameters"]} == trial["hyperparameters"]
        assert hparams["optimizer"] == "Adam" and hparams["epochs"] == 3
    assert not os.path.exists(os.path.join(run_dir, "runs", "backup"))
    assert not os.path.exists(os.path.join(run_dir, "runs", "history.jsonl"))


def test_optuna_trial_params_are_the_runs_hyperparameters(reference_runs):
    """The README's Optuna recipe: `hparams=trial.params` records each
    trial's suggested values in its run, with those every fit records."""
    needs_backend("optuna_objective")
    run_dir, _ = reference_runs("optuna_objective", fixed_order=FIXED_ORDER)
    out = outputs(run_dir)
    for relative, params in zip(out["runs"], out["params"], strict=True):
        hparams = kcallbacks.load_run(os.path.join(run_dir, relative)).manifest["hparams"]
        assert {k: hparams[k] for k in params} == params
        assert hparams["learning_rate"] == pytest.approx(params["learning_rate"])
        assert hparams["batch_size"] == 64
        assert set(kcallbacks.load_run(os.path.join(run_dir, relative)).manifest[
            "hparams_automatic"]) == {"optimizer", "batch_size", "epochs", "params"}


def test_validation_freq_epochs_without_validation_neither_save_nor_count(reference_runs):
    needs_backend("validation_freq")
    run_dir, result = reference_runs("validation_freq", fixed_order=FIXED_ORDER)
    run = kcallbacks.load_run(run_dir)
    validated = run.history.dropna(subset=["val_loss"])["epoch"].tolist()
    assert validated == [1, 3, 5]
    saved = run.events[run.events["type"] == "checkpoint_saved"]["epoch"].tolist()
    assert saved and set(saved) <= set(validated)
    # No warning that val_loss is missing: those epochs are expected.
    assert "is conditioned on metric `val_loss`" not in result.stderr
    # Patience 2 counts validated epochs only: the run is not stopped by
    # the unvalidated ones in between.
    stops = run.events[run.events["type"] == "early_stop"]
    assert stops.empty or set(stops["epoch"]) <= set(validated)
