"""`kreport compare` as a study view, run as the real command: runs found at
any depth, ranked by the objective, hyperparameter columns, states, bad
input. (The page in Chromium: tests/test_study_browser.py.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from kcallbacks import writer_lock
from run_factory import small_run

KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")


def kreport(*args):
    return subprocess.run([KREPORT, *args], capture_output=True, text=True)


def study_run(path, val_losses, hparams, status="finished", automatic=()):
    """A run whose val_loss goes through `val_losses` (and val_accuracy = 1 - it)."""
    run = small_run(path, epochs=len(val_losses))
    run.truncate_history(0)
    for epoch, value in enumerate(val_losses):
        run.append_history({"epoch": epoch, "loss": value + 0.1, "val_loss": value,
                            "val_accuracy": 1 - value})
    run.update_manifest(status=status, hparams=hparams, hparams_automatic=list(automatic),
                        callbacks=[{"class": "kcallbacks.ModelCheckpoint",
                                    "config": {"monitor": "val_loss", "mode": "min"}}])
    return run


def table_rows(html):
    """(label, state, objective text, hparam cells) of each row, in page order."""
    table = re.search(r'<table id="runs-table">(.*?)</table>', html, re.S).group(1)
    rows = []
    for row in re.findall(r'<tr data-rank="\d+"[^>]*>(.*?)</tr>', table, re.S):
        label = re.search(r'<td class="run-label">(.*?)</td>', row).group(1)
        state = re.search(r'<span class="state [^"]*">(.*?)</span>', row).group(1)
        objective = re.search(r'<td class="num objective">(.*?)</td>', row, re.S).group(1)
        hparams = re.findall(r'<td class="(?:num )?hparam">(.*?)</td>', row)
        rows.append((label, state, re.sub(r"<[^>]+>", "", objective).strip(), hparams))
    return rows


def header_hparams(html):
    return re.findall(r'<th class="hparam">(.*?)</th>', html)


@pytest.fixture
def study(tmp_path):
    """A sweep of four runs at three depths, plus a folder with no run."""
    root = tmp_path / "runs"
    study_run(root / "lr-0.01", [0.9, 0.5, 0.6], {"lr": 0.01, "units": 32, "batch_size": 64},
              automatic=["batch_size"])
    study_run(root / "lr-0.1", [0.8, 0.3, 0.4], {"lr": 0.1, "units": 32, "batch_size": 64},
              automatic=["batch_size"])
    study_run(root / "search" / "trial_07", [0.7, 0.45], {"lr": 0.001, "units": 64, "batch_size": 64},
              automatic=["batch_size"])
    study_run(root / "search" / "deeper" / "trial_08", [1.2],
              {"lr": 0.3, "units": 16, "batch_size": 64}, status="running", automatic=["batch_size"])
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("not a run")
    return root


def test_runs_at_any_depth_ranked_by_the_objective(study, tmp_path):
    out = tmp_path / "study.html"
    result = kreport("compare", str(study), "-o", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    rows = table_rows(html)
    assert [r[0] for r in rows] == [
        "lr-0.1", "search/trial_07", "lr-0.01", "search/deeper/trial_08"]
    assert [r[2] for r in rows] == ["0.3 (1)", "0.45 (1)", "0.5 (1)", "1.2 (0)"]
    # Given hyperparameters are columns; one recorded automatically and the
    # same everywhere is said once.
    assert header_hparams(html) == ["lr", "units"]
    assert [r[3] for r in rows][0] == ["0.1", "32"]
    assert re.search(r"The same in every run:\s*<code>batch_size = 64</code>", html)
    # Marked running but no process holds it: interrupted, not dropped.
    assert rows[-1][1] == "interrupted"
    assert "best lr-0.1 with val_loss 0.3 at epoch 1 (min)" in result.stdout
    assert "ModelCheckpoint&#39;s mode" in html or "ModelCheckpoint's mode" in html


def test_objective_and_direction_from_the_command_line(study, tmp_path):
    out = tmp_path / "study.html"
    # val_accuracy: higher is better, from its name.
    assert kreport("compare", str(study), "--objective", "val_accuracy", "-o", str(out)).returncode == 0
    assert [r[0] for r in table_rows(out.read_text())][:3] == ["lr-0.1", "search/trial_07", "lr-0.01"]
    # --max turns a loss around.
    assert kreport("compare", str(study), "--max", "-o", str(out)).returncode == 0
    html = out.read_text()
    assert [r[0] for r in table_rows(html)][0] == "search/deeper/trial_08"
    assert "higher is better" in html and "(--max)" in html


def test_run_directories_and_study_directories_together(study, tmp_path):
    out = tmp_path / "study.html"
    result = kreport("compare", str(study / "lr-0.01"), str(study / "search"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    labels = [r[0] for r in table_rows(out.read_text())]
    # Each labelled by its path under the PATH it was found in.
    assert sorted(labels) == ["deeper/trial_08", "lr-0.01", "trial_07"]


def test_a_run_whose_writer_is_alive_is_running(study, tmp_path):
    """The state comes from the writer lock: a live process holding it is
    a running run; once that process is killed, the run is interrupted."""
    run_dir = study / "search" / "deeper" / "trial_08"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from kcallbacks import writer_lock\n"
         f"writer_lock.acquire({str(run_dir)!r}, object()); print('HELD', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "HELD"
        assert writer_lock.is_written_now(run_dir) is True
        out = tmp_path / "study.html"
        assert kreport("compare", str(study), "-o", str(out)).returncode == 0
        assert table_rows(out.read_text())[-1][1] == "running"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while writer_lock.is_written_now(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer_lock.is_written_now(run_dir) is False


def test_the_page_holds_every_runs_curves_and_the_parallel_coordinates(study, tmp_path):
    out = tmp_path / "study.html"
    assert kreport("compare", str(study), "--top", "2", "-o", str(out)).returncode == 0
    html = out.read_text()
    figures = json.loads(re.search(
        r'<script type="application/json" id="kreport-figures">(.*?)</script>', html, re.S).group(1))
    parallel = figures[0]["data"][0]
    assert parallel["type"] == "parcoords"
    dimensions = {d["label"]: d for d in parallel["dimensions"]}
    assert list(dimensions) == ["lr (log)", "units", "val_loss"]
    assert dimensions["val_loss"]["values"] == [0.3, 0.45, 0.5, 1.2]
    curves = json.loads(re.search(
        r'<script type="application/json" id="kreport-curves">(.*?)</script>', html, re.S).group(1))
    assert [r["label"] for r in curves["runs"]] == [
        "lr-0.1", "search/trial_07", "lr-0.01", "search/deeper/trial_08"]
    import base64

    import numpy as np
    y = curves["runs"][2]["y"]["val_loss"]
    assert y["dtype"] == "f4"
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(y["bdata"]), "float32"),
                               [0.9, 0.5, 0.6], rtol=1e-6)
    # The best two are drawn at first.
    assert html.count('class="curve-toggle"') == 4
    assert len(re.findall(r'class="curve-toggle"[^>]* checked>', html)) == 2


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "{missing}: no such directory"),
    (["{empty}"], "{empty}: neither a run directory nor a directory holding runs"),
    (["{study}", "--objective", "val_f1"],
     "no run logs the objective 'val_f1'; the runs log: loss, val_loss, val_accuracy"),
    (["{study}", "--top", "-1"], "Invalid value for '--top'"),
])
def test_bad_input_is_one_line_and_exit_2(study, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "study": study}
    args = [a.format(**paths) for a in args]
    result = kreport("compare", *args, "-o", str(tmp_path / "out.html"))
    assert result.returncode == 2
    assert message.format(**paths) in result.stderr
    assert "Traceback" not in result.stderr
    if "Invalid value" not in message:
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.html").exists()
