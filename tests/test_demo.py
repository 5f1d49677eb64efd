"""The README's demo command, for real: trains, records, builds the report."""

import json
import os
import re
import subprocess
import sys

import pytest

# Behavioural: CI runs this file on every backend.
pytestmark = pytest.mark.all_backends

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo.py")


def test_demo_trains_and_builds_its_report(tmp_path):
    run_dir = tmp_path / "demo"
    result = subprocess.run([sys.executable, DEMO, str(run_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {run_dir}/report.html" in result.stdout

    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] in ("finished", "stopped_early")
    classes = {c["class"] for c in manifest["callbacks"]}
    assert {
        f"kcallbacks.{module}.{name}" for module, name in [
            ("history_logger", "HistoryLogger"), ("batch_loss_tracker", "BatchLossTracker"),
            ("model_checkpoint", "ModelCheckpoint"), ("reduce_lr_on_plateau", "ReduceLROnPlateau"),
            ("early_stopping", "EarlyStopping"), ("backup_and_restore", "BackupAndRestore"),
        ]
    } <= classes
    assert os.path.exists(run_dir / "checkpoints" / "best.weights.h5")
    epochs = len((run_dir / "history.jsonl").read_text().splitlines())
    steps_per_epoch = -(-1347 // 32)  # 75% of the 1797 digits, in batches of 32
    assert os.path.getsize(run_dir / "batches.bin") == epochs * steps_per_epoch * 24

    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert '<h1 id="run-name">demo</h1>' in html
    assert re.search(r"<tr><td>val_loss</td><td class=\"num\">0\.\d+</td>", html)


def test_demo_run_again_trains_nothing_and_says_so(tmp_path):
    run_dir = tmp_path / "demo"
    for attempt in range(2):
        result = subprocess.run([sys.executable, DEMO, str(run_dir)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "already finished" in result.stdout
    assert f"Wrote {run_dir}/report.html" in result.stdout
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] in ("finished", "stopped_early")
    assert len(manifest["attempts"]) == 2
