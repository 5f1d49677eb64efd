"""The README's demo command, for real: trains, records, builds the report."""

import json
import os
import re
import subprocess
import sys

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo.py")


def test_demo_trains_and_builds_its_report(tmp_path):
    run_dir = tmp_path / "demo"
    result = subprocess.run([sys.executable, DEMO, str(run_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {run_dir}/report.html" in result.stdout

    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] in ("finished", "stopped_early")
    classes = {c["class"].rsplit(".", 1)[-1] for c in manifest["callbacks"]}
    assert {"ModelCheckpoint", "ReduceLROnPlateau", "EarlyStopping", "HistoryLogger"} <= classes
    assert os.listdir(run_dir / "checkpoints")

    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert '<h1 id="run-name">demo</h1>' in html
    assert re.search(r"<tr><td>val_loss</td><td class=\"num\">0\.\d+</td>", html)
