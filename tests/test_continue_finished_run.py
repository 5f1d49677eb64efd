"""A finished run continued with more epochs (CI runs it on every backend):
the checkpoint directory ends with the kept checkpoints, the best pointer
and the index, and nothing else (no temporary file left behind)."""

import json
import os
import subprocess
import sys

import pytest

from kcallbacks.run_reader import load_run

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_best_checkpoints.py")


def train(run_dir, epochs):
    # The subprocess inherits KERAS_BACKEND: the backend under test.
    result = subprocess.run([sys.executable, SCRIPT, str(run_dir), str(epochs)],
                            capture_output=True, text=True, timeout=300)
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
