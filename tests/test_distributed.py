"""The suite under tf.distribute: MirroredStrategy on two logical CPUs, and one writer per run."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import kcallbacks
from kcallbacks.run_format import WRITER_LOCK
from resume_harness import final_weights, kill_when_line, run_to_completion

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
SUITE = os.environ.get("KC_RESUME_SUITE", "full")


def keras_side(run_dir):
    with open(os.path.normpath(str(run_dir)) + ".keras_history.json") as f:
        return json.load(f)


def test_mirrored_strategy_full_suite_and_exact_resume(tmp_path):
    epochs, extra = 7, ("--suite", SUITE, "--mirrored")
    reference_dir = tmp_path / "reference"
    run_to_completion(reference_dir, epochs, "epoch", *extra)

    reference = kcallbacks.load_run(reference_dir)
    assert reference.manifest["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2, "workers": 1}
    report = subprocess.run([KREPORT, "build", str(reference_dir)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    html = (reference_dir / "report.html").read_text(encoding="utf-8")
    assert '<td id="distribution">MirroredStrategy · 2 replicas · 1 worker</td>' in html
    # History rows are what Keras' own History saw.
    seen = keras_side(reference_dir)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(reference.history.columns)
    for key, values in seen["history"].items():
        if key in reference.history:  # keys put in logs by later callbacks are not
            np.testing.assert_array_equal(reference.history[key].to_numpy(), values)
    # Per-batch records are global batches: their size-weighted mean is the epoch loss.
    for epoch, rows in reference.batches.groupby("epoch"):
        assert set(rows["size"]) == {32}
        np.testing.assert_allclose(
            np.average(rows["loss"], weights=rows["size"]),
            reference.history["loss"][epoch], rtol=1e-5,
        )
    # Every replica holds the learning rate of the last history row (after
    # any reduction at its end).
    rates = seen["replica_learning_rates"]
    assert len(rates) == 2 and rates[0] == rates[1]
    if SUITE == "full":
        reductions = reference.events[reference.events["type"] == "lr_reduced"]
        assert len(reductions) >= 1
        assert rates[0] == pytest.approx(reductions["new"].iloc[-1], rel=1e-6)
        assert (reference.events["type"] == "checkpoint_saved").any()

    resumed_dir = tmp_path / "resumed"
    kill_when_line(resumed_dir, epochs, "epoch", lambda l: l == "BATCH 3 2", *extra)
    run_to_completion(resumed_dir, epochs, "epoch", *extra)
    resumed = kcallbacks.load_run(resumed_dir)
    columns = [c for c in reference.history.columns if c not in ("wall_time", "epoch_time")]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
    pd.testing.assert_frame_equal(resumed.batches, reference.batches)
    for ours, theirs in zip(final_weights(resumed_dir), final_weights(reference_dir)):
        np.testing.assert_array_equal(ours, theirs)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def task_env(cluster, task_type, index, tmp_dir):
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})
    env["TMPDIR"] = str(tmp_dir)
    return env


def test_only_the_chief_writes_the_run(tmp_path):
    chief_port, worker_port = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{chief_port}"], "worker": [f"127.0.0.1:{worker_port}"]}
    run_dir = tmp_path / "run"
    scratch = {role: tmp_path / f"tmp-{role}" for role in ("chief", "worker")}
    for path in scratch.values():
        path.mkdir()
    # Two real processes with the chief's and a worker's TF_CONFIG train into
    # the same run directory, the worker for more epochs: any file it wrote
    # there would show.
    processes = {
        "chief": subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, "train_as_task.py"), str(run_dir), "3"],
            env=task_env(cluster, "chief", 0, scratch["chief"]), stdout=subprocess.PIPE, text=True,
        ),
        "worker": subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, "train_as_task.py"), str(run_dir), "5"],
            env=task_env(cluster, "worker", 0, scratch["worker"]), stdout=subprocess.PIPE, text=True,
        ),
    }
    for role, process in processes.items():
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0 and "TRAINING_DONE" in out, role

    run = kcallbacks.load_run(run_dir)
    assert run.history["epoch"].tolist() == [0, 1, 2]
    assert run.batches["epoch"].max() == 2
    assert len(run.manifest["attempts"]) == 1
    backup = sorted(n for n in os.listdir(run_dir / "backup") if n != WRITER_LOCK)
    assert len(backup) == 1 and backup[0].startswith("snapshot-")
    # The worker's scratch copy was removed when it exited.
    assert os.listdir(scratch["worker"]) == []


class KnownUpstreamFailure(AssertionError):
    """model.fit under MultiWorkerMirroredStrategy failed the known way."""


@pytest.mark.xfail(
    raises=KnownUpstreamFailure,
    reason="Keras 3 model.fit under MultiWorkerMirroredStrategy fails upstream "
    "(keras-team/keras#20585, tensorflow/tensorflow#72388); the test reports "
    "XPASS once upstream fixes it, and fails on any other error",
)
def test_multi_worker_mirrored_strategy_fit(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp-{index}"
        scratch.mkdir()
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, "train_as_task.py"), str(run_dir), "2", "--multi-worker"],
            env=task_env(cluster, "worker", index, scratch),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results.append((process.returncode, out, err))
    for code, out, err in results:
        if code != 0 and "Attempt to convert a value (PerReplica" in err:
            raise KnownUpstreamFailure(err[-500:])
        assert code == 0 and "TRAINING_DONE" in out, err[-2000:]
    assert kcallbacks.load_run(run_dir).history["epoch"].tolist() == [0, 1]
