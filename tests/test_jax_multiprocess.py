"""The suite under real JAX multi-process data parallelism (issue 14): two
processes of one `jax.distributed` job on loopback (CPU, gloo collectives),
`keras.distribution.DataParallel` with each process feeding its own shard,
the same callbacks and run directory in both.

- One writer: the two processes leave exactly the files one process leaves,
  with no row, batch record or event twice, and end with equal weights.
- The per-batch log holds the global batch's loss: what a plain process
  fitting on the composed global batches computes, not a process's shard.
- All processes SIGKILLed, restarted until done: the same run as an
  uninterrupted one, exactly.
- SIGTERM to one process: every process stops at one common step with
  status 143, and the re-run ends identical to an uninterrupted one.

Runs only when the test process itself runs on JAX (the CI's JAX pass); the
training subprocesses (tests/scripts/train_jax_multiprocess.py) set their
own backend.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter

import keras
import numpy as np
import pandas as pd
import pytest

import kcallbacks
from jax_multiprocess import (
    batch_lines, final_weights, kill_all_when, run_all_to_completion, run_files, scratch_dir,
    signal_one_when,
)
from kcallbacks import snapshots
from kcallbacks.run_directory import read_checkpoint_index
from training import digits_data

# Marked all_backends so that tests/run_backends.py selects it in its JAX
# pass; on the other backends it is skipped.
pytestmark = [
    pytest.mark.all_backends,
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs in the JAX pass (KERAS_BACKEND=jax)"),
]

# 12 epochs at most; with the full suite the plateau schedule halves the
# rate five times and early stopping ends the run after epoch 9 (90 steps
# of 9 global batches of 32).
EPOCHS = 12
STEPS_PER_EPOCH = 9
# From a SIGTERM to one process until every process has exited. JAX's
# pre-emption sync point comes a few seconds after the signal (its notice
# travels through the coordination service), plus a snapshot and shutdown.
EXIT_BOUND_SECONDS = 60
TIMES = ("wall_time", "epoch_time")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two runs the tests compare with, uninterrupted, full suite: a
    2-process run, and one plain process fitting on the same global batches
    (the independent recomputation)."""
    root = tmp_path_factory.mktemp("jax_multiprocess")
    run_all_to_completion(root / "single" / "run", 1, EPOCHS, "--compose", "2")
    run_all_to_completion(root / "two" / "run", 2, EPOCHS)
    return root / "single" / "run", root / "two" / "run"


def assert_same_run(reference_dir, resumed_dir, processes=2):
    """Exactly the same run, also after kills and restarts: history (but
    the times), per-batch log, kept checkpoints, the plateau and early-stop
    events, and every process's final weights."""
    reference, resumed = kcallbacks.load_run(reference_dir), kcallbacks.load_run(resumed_dir)
    columns = [c for c in reference.history.columns if c not in TIMES]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
    pd.testing.assert_frame_equal(resumed.batches, reference.batches)
    for process in range(processes):
        for ours, theirs in zip(final_weights(resumed_dir, process), final_weights(reference_dir, 0)):
            np.testing.assert_array_equal(ours, theirs)
    assert resumed.manifest["status"] == reference.manifest["status"]
    assert resumed.manifest["last_epoch"] == reference.manifest["last_epoch"]
    assert resumed.warnings == []
    ours, theirs = (os.path.join(d, "checkpoints") for d in (resumed_dir, reference_dir))
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    assert read_checkpoint_index(ours) == read_checkpoint_index(theirs)
    for kind in ("lr_reduced", "early_stop"):
        ours, theirs = (
            run.events[run.events["type"] == kind].drop(columns=["time"]).dropna(axis=1, how="all")
            .reset_index(drop=True)
            for run in (resumed, reference))
        # Integer columns read as floats where other event types lack them.
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert not [f for f in run_files(resumed_dir) if ".tmp-" in f]
    return reference, resumed


def test_one_writer_leaves_what_one_process_leaves(runs):
    single_dir, two_dir = runs
    single, two = kcallbacks.load_run(single_dir), kcallbacks.load_run(two_dir)
    # The same files, every one (snapshot, checkpoints named by val_loss,
    # index, logs, manifest), and no temporary left behind.
    assert run_files(two_dir) == run_files(single_dir)
    assert not [f for f in run_files(two_dir) if ".tmp-" in f]
    # The other process's private scratch directory went with it.
    assert not glob.glob(os.path.join(scratch_dir(two_dir), "kcallbacks-non-chief-*"))
    assert two.warnings == []
    assert two.manifest["distribution"] == {
        "strategy": "DataParallel", "replicas": 2, "mesh": {"batch": 2}, "workers": 2, "process": 0}
    assert len(two.manifest["attempts"]) == 1
    # The report says so.
    report = two_dir.parent / "report.html"
    kreport = os.path.join(os.path.dirname(sys.executable), "kreport")
    subprocess.run([kreport, "build", str(two_dir), "-o", str(report)], check=True, capture_output=True)
    html = report.read_text(encoding="utf-8")
    shown = html[html.index('id="distribution">'):].split("</td>")[0]
    assert shown.endswith("DataParallel · 2 replicas · 2 processes · mesh batch=2")
    # The full suite acted: rate reductions, early stopping, rolling checkpoints.
    assert two.manifest["status"] == "stopped_early"
    assert two.history["learning_rate"].nunique() > 1
    # One history row per epoch, one batch record per step.
    epochs = two.history["epoch"].tolist()
    assert epochs == list(range(len(epochs))) == single.history["epoch"].tolist()
    assert two.batches["step"].tolist() == list(range(len(epochs) * STEPS_PER_EPOCH))
    assert set(two.batches["size"]) == {32}
    columns = [c for c in single.history.columns if c not in TIMES]
    pd.testing.assert_frame_equal(two.history[columns], single.history[columns], rtol=1e-5)
    # No event twice: the same kinds, as many, as one process records.
    assert Counter(two.events["type"]) == Counter(single.events["type"])
    saved = two.events[two.events["type"] == "checkpoint_saved"]["epoch"]
    assert not saved.duplicated().any()
    # Every process's ReduceLROnPlateau and EarlyStopping took the same
    # decisions at every epoch (they see the same global logs).
    decisions = [json.loads((two_dir.parent / f"run.decisions.{p}.json").read_text()) for p in (0, 1)]
    assert decisions[0] == decisions[1]
    assert len({rate for _, rate, _ in decisions[0]}) > 1 and decisions[0][-1][2] is True
    # The processes end with the same weights (and the plain process's, up
    # to the order of float sums).
    for w0, w1, plain in zip(final_weights(two_dir, 0), final_weights(two_dir, 1), final_weights(single_dir, 0)):
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_allclose(w0, plain, rtol=1e-4, atol=1e-6)


def test_per_batch_loss_is_the_global_batch_loss(runs):
    single_dir, two_dir = runs
    single, two = kcallbacks.load_run(single_dir), kcallbacks.load_run(two_dir)
    keys = ["step", "epoch", "batch", "size"]
    pd.testing.assert_frame_equal(two.batches[keys], single.batches[keys])
    np.testing.assert_allclose(two.batches["loss"], single.batches["loss"], rtol=1e-5)

    # Not a process's own shard: the first global batch, with the initial
    # weights (the scripts' model and seed), is process 0's 16 rows then
    # process 1's; its loss is the mean of the two halves' losses.
    x, y = digits_data(384)
    keras.utils.set_random_seed(1234)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    halves = [float(loss(y[:288][p::2][:16], model(x[:288][p::2][:16]))) for p in (0, 1)]
    first = two.batches["loss"][0]
    assert first == pytest.approx(np.mean(halves), rel=1e-5)
    assert abs(first - halves[0]) > 1e-3 * abs(first)


def test_all_processes_killed_and_restarted_resume_exactly(runs, tmp_path):
    _, reference_dir = runs
    run_dir = tmp_path / "resumed" / "run"
    extra = ("--save-freq", "4")  # snapshots every 4 of 9 batches: mid-epoch too
    # Killed (every process) at an epoch's end once a snapshot is complete.
    kill_all_when(run_dir, 2, EPOCHS, lambda i, line: line == "EPOCH_DONE 2" and bool(
        snapshots.list_snapshots(run_dir / "backup")), *extra, delay=0.01)
    # Killed mid-epoch, resuming from a mid-epoch snapshot.
    kill_all_when(run_dir, 2, EPOCHS, lambda i, line: line == "BATCH 5 6", *extra)
    state, _ = snapshots.read_snapshot(snapshots.list_snapshots(run_dir / "backup")[0][1])
    assert (state["epoch"], state["batch"]) >= (4, 0)
    lines = run_all_to_completion(run_dir, 2, EPOCHS, *extra)
    assert all("already finished" not in "\n".join(out) for out in lines)

    _, resumed = assert_same_run(reference_dir, run_dir)
    resumes = resumed.events[resumed.events["type"] == "resumed"]
    assert len(resumes) == 2
    assert len(resumed.manifest["attempts"]) == 3


def test_the_non_writer_writes_no_snapshots(tmp_path):
    """Every process restores from the writer's snapshots: the other one
    writes none (into its scratch directory, which a SIGKILL leaves behind,
    they would fill /tmp with one model-and-optimizer copy per backup)."""
    run_dir = tmp_path / "run"
    kill_all_when(run_dir, 2, EPOCHS, lambda i, line: line == "EPOCH_DONE 3", "--save-freq", "4", delay=0.05)
    # The writer keeps one (two when the kill fell between a new snapshot's
    # rename and the older one's removal, which follows it).
    assert 1 <= len(snapshots.list_snapshots(run_dir / "backup")) <= 2
    scratch, = glob.glob(os.path.join(scratch_dir(run_dir), "kcallbacks-non-chief-*"))
    kept = glob.glob(os.path.join(scratch, "**", "snapshot-*"), recursive=True)
    assert kept == [], f"the non-writer's scratch holds {kept}"


@pytest.mark.parametrize("target", [0, 1], ids=["chief", "non_chief"])
def test_sigterm_to_one_process_stops_all_at_one_step(runs, tmp_path, target):
    _, reference_dir = runs
    run_dir = tmp_path / "preempted" / "run"
    # JAX's sync point comes a second or two after the signal (its notifier
    # polls a flag each second, then the notice goes through the coordination
    # service): early in the run, with slower steps (0.25 s), so that it
    # comes long before the fit ends. The restart trains at full speed.
    status, seconds, lines, errors = signal_one_when(
        run_dir, 2, EPOCHS, lambda i, line: i == target and line == "BATCH 0 4", target, signal.SIGTERM,
        "--step-sleep", "0.25", exit_timeout=EXIT_BOUND_SECONDS)
    trained = [len(batch_lines(out)) for out in lines]
    assert status == [143, 143], (
        f"exit statuses {status}, {seconds} s after the signal, steps trained {trained}\n"
        + "\n".join(errors[0][-10:] + errors[1][-10:]))
    assert max(seconds) < EXIT_BOUND_SECONDS, seconds
    assert not any("TRAINING_DONE" in out for out in lines)
    # Every process stopped at the same step and says so.
    stops = []
    for err in errors:
        found = [re.search(r"saved at epoch (\d+), batch (\d+) \(step (\d+)\)", e) for e in err]
        stops.append([tuple(int(g) for g in m.groups()) for m in found if m])
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    (epoch, batch, step), = stops[0]
    assert step == epoch * STEPS_PER_EPOCH + batch and (epoch, batch) > (0, 4)
    run = kcallbacks.load_run(run_dir)
    preempted = run.events[run.events["type"] == "preempted"]
    assert preempted[["signal", "epoch", "batch", "step"]].values.tolist() == [["SIGTERM", epoch, batch, step]]
    # Each process trained up to the stop step, no further.
    assert trained == [step, step]

    run_all_to_completion(run_dir, 2, EPOCHS)
    _, resumed = assert_same_run(reference_dir, run_dir)
    assert [bool(a.get("preempted")) for a in resumed.manifest["attempts"]] == [True, False]
