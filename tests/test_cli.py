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


def test_cli_never_imports_tensorflow():
    probe = (
        "import sys; from click.testing import CliRunner; from kreport.main import cli;"
        "CliRunner().invoke(cli, ['--help']);"
        "import kcallbacks.run_directory;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
