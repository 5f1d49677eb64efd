"""The kreport command line, run as a real subprocess."""

import os
import subprocess
import sys

import kcallbacks

# The console script pip installed beside this interpreter: what users run.
KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")


def kreport(*args):
    return subprocess.run([KREPORT, *args], capture_output=True, text=True)


def test_help_and_version():
    result = kreport("--help")
    assert result.returncode == 0
    assert "Usage: kreport" in result.stdout and "run directory" in result.stdout
    version = kreport("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"kreport, version {kcallbacks.__version__}"


def test_unknown_command_is_a_usage_error():
    result = kreport("frobnicate")
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_never_imports_tensorflow(tmp_path):
    """Every command, run in one process on a run with batches and events,
    leaves TensorFlow and Keras unimported (both are installed here)."""
    probe = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from click.testing import CliRunner
from kreport.main import cli
from run_factory import small_run

run = small_run({str(tmp_path / "run")!r}).path
for args in (["--help"], ["build", run], ["summary", "--json", run],
             ["tensorboard", run], ["compare", run, run, "-o", run + ".html"]):
    assert CliRunner().invoke(cli, args).exit_code == 0, args
from werkzeug.test import Client
from kreport.live import LiveRun
from kreport.serve import ServeApp
server = Client(ServeApp({{"r": LiveRun(run, "r")}}))
for path in ("/", "/runs/r/", "/api/runs/r/updates", "/api/overview"):
    assert server.get(path).status_code == 200, path
print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "run" / "tensorboard" / "train").is_dir()


def test_help_of_each_command_reads_like_a_man_page():
    for command, words in {
        "build": ["self-contained HTML", "--open", "RUN_DIR/report.html"],
        "tensorboard": ["epoch_learning_rate", "--logdir", "no point is"],
        "summary": ["--json", "best"],
        "compare": ["at any depth", "--objective", "--max", "--top", "-o, --output"],
        "serve": ["127.0.0.1", "Ctrl-C", "--port", "404"],
    }.items():
        result = kreport(command, "--help")
        assert result.returncode == 0
        assert f"Usage: kreport {command}" in result.stdout
        for word in words:
            assert word in result.stdout, (command, word)
