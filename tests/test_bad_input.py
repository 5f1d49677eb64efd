"""Bad input to kreport: a report with a visible warning, or one line on stderr
and exit status 2. Never a traceback, and the run directory is never changed."""

import hashlib
import math
import os
import re
import signal
import subprocess
import sys
from html import unescape

import pytest
from click.testing import CliRunner

from kcallbacks import run_format as rd
from kreport.main import cli
from run_factory import small_run

KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    # Anything but click's own exit is an escaped exception: a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def assert_one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kreport: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def report_warnings(path):
    html = open(path, encoding="utf-8").read()
    return [unescape(w) for w in re.findall(r'<div class="warning">(.*?)</div>', html)]


def snapshot(directory):
    """Every file below `directory` with its bytes' hash and modification time."""
    state = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, directory)] = (
                    hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns,
                )
    return state


# --- no run at all: exit 2 ----------------------------------------------------


@pytest.mark.parametrize("command", ["build", "summary", "tensorboard", "compare"])
def test_missing_and_empty_directories_are_one_line_errors(tmp_path, command):
    good = small_run(tmp_path / "good").path
    missing = str(tmp_path / "nowhere")
    others = [good] if command == "compare" else []
    # compare takes directories that hold runs too.
    no_such, not_a_run = {
        "compare": ("nowhere: no such directory",
                    "empty: neither a run directory nor a directory holding runs"),
        "tensorboard": ("nowhere: no such run directory",
                        "empty: neither a run directory nor a directory holding runs"),
    }.get(command, ("nowhere: no such run directory", "empty: not a run directory (no run.json)"))
    assert_one_line_error(invoke(command, *others, missing), no_such)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke(command, *others, str(empty)), not_a_run)
    assert os.listdir(empty) == []


def test_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    assert_one_line_error(invoke("build", str(tmp_path / "photos")), "not a run directory")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"schema_version": 1, "status": "runn', "run.json: corrupted manifest"),
        (b"\x00\x9f\x92\x96 garbage \xff", "run.json: corrupted manifest"),
        (b"[1, 2, 3]", "corrupted manifest (not a JSON object)"),
        (b'{"schema_version": 7}', "schema version 7 is newer"),
    ],
)
def test_unreadable_manifest_is_one_line_error(tmp_path, content, message):
    run = small_run(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_bytes(content)
    assert_one_line_error(invoke("summary", run.path), message)
    assert_one_line_error(invoke("build", run.path), message)


def test_compare_of_one_run_is_a_study_of_one(tmp_path):
    run = small_run(tmp_path / "run")
    result = invoke("compare", run.path, "-o", str(tmp_path / "one.html"))
    assert result.exit_code == 0, result.output
    assert "1 run, best run with val_accuracy 0.65 at epoch 4 (max)" in result.output


# --- damaged runs: a report with a visible warning ----------------------------


def add_bytes(run, name, data, mode="ab"):
    with open(run.file(name), mode) as f:
        f.write(data)


def torn_history_line(run):
    add_bytes(run, rd.HISTORY_JSONL, b'{"epoch": 5, "loss": 0.1')
    return "history.jsonl: ignored a torn last line (line 6)"


def corrupted_batch_schema(run):
    add_bytes(run, rd.BATCHES_SCHEMA, b'{"columns": ["step", "epo', mode="wb")
    return "per-batch log ignored"


def garbage_in_history(run):
    add_bytes(run, rd.HISTORY_JSONL, os.urandom(64).replace(b"\n", b"") + b"\n" + b"\x00\xff\n\x81\x82\n")
    return "history.jsonl: ignored 3 unreadable lines (6, 7, 8)"


def garbage_in_batch_log(run):
    # Whole records' worth of junk: only the steps going backwards give it away.
    add_bytes(run, rd.BATCHES_BIN, b"\x00" * 24 * 3)
    return "batches.bin: ignored 3 records from record 20 on"


def garbage_in_event_log(run):
    add_bytes(run, rd.EVENTS_JSONL, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n")
    return "events.jsonl: ignored 3 unreadable lines (6, 7, 8)"


def non_finite_values(run):
    run.append_history({"epoch": 5, "loss": math.nan, "val_loss": math.inf, "accuracy": 0.1})
    run.append_history({"epoch": 6, "loss": math.nan, "val_loss": 0.5, "accuracy": 0.1})
    return "loss is NaN or infinite in epochs 5–6"


def metric_in_some_epochs_only(run):
    run.append_history({"epoch": 5, "loss": 0.1, "late": 3.0})
    return "late was recorded in 1 of 6 epochs only (5)"


def history_row_without_epoch(run):
    run.append_history({"loss": 0.1})
    run.append_history({"epoch": "six", "loss": 0.1})
    return "history.jsonl: ignored 2 rows without a whole-number epoch"


def text_in_a_metric(run):
    run.append_history({"epoch": 5, "loss": 0.1, "note": "lr warmup"})
    return "history column 'note' does not hold numbers"


def no_epoch_yet(run):
    for name in (rd.HISTORY_JSONL, rd.HISTORY_CSV, rd.BATCHES_BIN, rd.EVENTS_JSONL):
        os.unlink(run.file(name))
    run.update_manifest(status="running")
    return "no epoch has finished yet"


DAMAGES = [
    torn_history_line, corrupted_batch_schema, garbage_in_history, garbage_in_batch_log,
    garbage_in_event_log, non_finite_values, metric_in_some_epochs_only,
    history_row_without_epoch, text_in_a_metric, no_epoch_yet,
]


STUDY_DAMAGES = [
    torn_history_line, garbage_in_history, non_finite_values, history_row_without_epoch,
    text_in_a_metric,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_damaged_run_gives_a_report_with_a_visible_warning(tmp_path, damage):
    run = small_run(tmp_path / "run")
    warning = damage(run)
    before = snapshot(run.path)
    report = tmp_path / "report.html"

    result = invoke("build", run.path, "-o", str(report))
    assert result.exit_code == 0, result.output
    assert any(warning in w for w in report_warnings(report)), report_warnings(report)
    assert f"kreport: warning: {warning}" in result.stderr

    summary = invoke("summary", run.path)
    assert summary.exit_code == 0 and warning in summary.stderr
    # A study reads the manifest and the history only: it warns about those.
    compare = invoke("compare", run.path, run.path, "-o", str(tmp_path / "compare.html"))
    assert compare.exit_code == 0, compare.output
    if damage in STUDY_DAMAGES:
        assert warning in compare.stderr
    assert snapshot(run.path) == before


def test_binary_garbage_end_to_end(tmp_path):
    """The console script itself, on a run whose logs are all junk."""
    run = small_run(tmp_path / "run")
    for name in (rd.HISTORY_JSONL, rd.EVENTS_JSONL, rd.BATCHES_BIN):
        with open(run.file(name), "wb") as f:
            f.write(os.urandom(4096))
    result = subprocess.run([KREPORT, "build", run.path], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = report_warnings(run.file("report.html"))
    assert any("history.jsonl: ignored" in w for w in warnings)
    assert any("no epoch has finished yet" in w for w in warnings)


def test_build_summary_compare_change_nothing_in_the_run(tmp_path):
    run = small_run(tmp_path / "run")
    before = snapshot(run.path)
    assert invoke("build", run.path).exit_code == 0
    assert invoke("summary", "--json", run.path).exit_code == 0
    assert invoke("compare", run.path, run.path, "-o", str(tmp_path / "c.html")).exit_code == 0
    after = snapshot(run.path)
    assert after.pop("report.html")  # the one file build adds, by default
    assert after == before


def test_run_still_being_written(tmp_path):
    """A real training subprocess: reports while it writes, and after a SIGKILL."""
    run_dir = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "train_history.py"), str(run_dir), "500"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        for line in trainer.stdout:
            if line.startswith("EPOCH_DONE 2"):
                break
        for _ in range(3):
            live = subprocess.run([KREPORT, "summary", "--json", str(run_dir)], capture_output=True, text=True)
            assert live.returncode == 0 and "Traceback" not in live.stderr, live.stderr
            assert '"status": "running"' in live.stdout
            built = subprocess.run([KREPORT, "build", str(run_dir)], capture_output=True, text=True)
            assert built.returncode == 0, built.stderr
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    assert "running or interrupted" in open(run_dir / "report.html", encoding="utf-8").read()
    result = invoke("summary", str(run_dir))
    assert result.exit_code == 0
    assert re.search(r"^status +running or interrupted \(last written", result.stdout, re.M)


def test_manifest_with_odd_types_still_reports(tmp_path):
    run = small_run(tmp_path / "run")
    run.update_manifest(
        name=42, status=["finished"], attempts="many", environment=[1, 2],
        fit_params={"epochs": "ten"}, callbacks=[None, "EarlyStopping", {"config": [1]}],
        optimizer="adam", model={"summary": {"not": "text"}, "total_params": "lots"},
    )
    run.append_history({"epoch": 5, "loss": 0.1, "wall_time": "noon", "learning_rate": "high"})
    compare = ["compare", "-o", str(tmp_path / "compare.html"), run.path]
    for command in (["build"], ["summary", "--json"], ["tensorboard"], compare):
        result = invoke(*command, run.path)
        assert result.exit_code == 0, (command, result.output)
    assert re.search(r"^status +unknown$", invoke("summary", run.path).stdout, re.M)
