"""A finished run continued with more epochs (CI runs it on every backend):
the checkpoint directory ends with the kept checkpoints, the best pointer
and the index, and nothing else (no temporary file left behind)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from kcallbacks.run_reader import load_run

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_best_checkpoints.py")


def train(run_dir, epochs, kill_epoch=None):
    # The subprocess inherits KERAS_BACKEND: the backend under test.
    kill = [] if kill_epoch is None else [str(kill_epoch)]
    result = subprocess.run([sys.executable, SCRIPT, str(run_dir), str(epochs), *kill],
                            capture_output=True, text=True, timeout=300)
    if kill_epoch is not None:
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINING_DONE" in result.stdout


@pytest.mark.all_backends
def test_continuing_a_finished_run_leaves_no_temporary_file(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, 4)
    train(run_dir, 6)

    checkpoints = run_dir / "checkpoints"
    index = json.loads((checkpoints / "checkpoints.json").read_text())
    kept = [entry["name"] for entry in index["checkpoints"]]
    assert len(kept) == 2
    assert sorted(os.listdir(checkpoints)) == sorted(kept + ["best.weights.h5", "checkpoints.json"])
    assert os.path.samefile(checkpoints / "best.weights.h5", checkpoints / index["best"])
    assert load_run(run_dir).history["epoch"].tolist() == list(range(6))


def checkpoint_events(run_dir):
    events = load_run(run_dir).events
    events = events[events["type"].isin(["checkpoint_saved", "checkpoint_deleted"])]
    return list(zip(events["type"], events["epoch"], events["path"]))


@pytest.mark.all_backends
def test_a_kill_after_an_eviction_resumes_with_the_evicted_checkpoint(tmp_path):
    """A SIGKILL after an epoch's checkpoint evicted an older one, before the
    backup snapshot that records it: the re-run resumes from a state that
    still keeps the older checkpoint, so its file must still be there (it
    goes once a snapshot no longer lists it). The run then ends with the
    files and the events of an uninterrupted one."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train(reference, 5)
    train(killed, 5, kill_epoch=3)
    # Epoch 3's save evicted a checkpoint; the last snapshot (epoch 3's
    # begin) still keeps it, and so does the disk.
    index = json.loads((killed / "checkpoints" / "checkpoints.json").read_text())
    evicted = set(os.listdir(killed / "checkpoints")) - {e["name"] for e in index["checkpoints"]}
    assert evicted - {"best.weights.h5", "checkpoints.json"}, "epoch 3 evicted nothing"
    train(killed, 5)

    assert sorted(os.listdir(killed / "checkpoints")) == sorted(os.listdir(reference / "checkpoints"))
    for name in os.listdir(reference / "checkpoints"):
        assert (killed / "checkpoints" / name).read_bytes() == \
            (reference / "checkpoints" / name).read_bytes(), name
    assert checkpoint_events(killed) == checkpoint_events(reference)
