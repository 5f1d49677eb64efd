"""The built wheel, installed into a clean directory, is a clean package."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(REPO)],
        check=True, cwd=out,
    )
    (path,) = out.glob("kcallbacks-*.whl")
    return path


def test_wheel_has_no_top_level_cli_or_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "cli" not in top_level and "templates" not in top_level
    assert {"kcallbacks", "kreport"} <= top_level
    for template in ("base.html.j2", "report.html.j2", "compare.html.j2", "_charts.html.j2", "_macros.html.j2",
                     "_run_sections.html.j2", "serve_run.html.j2", "serve_overview.html.j2", "_serve_runs.html.j2"):
        assert f"kreport/templates/{template}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kreport = kreport.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_works_from_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
         str(target), str(wheel)],
        check=True,
    )
    assert not (target / "cli").exists() and not (target / "templates").exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = (
        "import kcallbacks, kreport, importlib.resources as r;"
        "print(kcallbacks.__file__);"
        "print(r.files('kreport.templates').joinpath('base.html.j2').is_file())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=outside, env=env,
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "True"
    help_text = subprocess.run(
        [str(target / "bin" / "kreport"), "--help"], cwd=outside, env=env,
        capture_output=True, text=True, check=True,
    ).stdout
    assert "Usage: kreport" in help_text

    # The report's templates load from the installed package.
    make_run = (
        "from kcallbacks.run_directory import RunDirectory;"
        "RunDirectory('run', create=True).append_history({'epoch': 0, 'loss': 1.0})"
    )
    subprocess.run([sys.executable, "-c", make_run], cwd=outside, env=env, check=True)
    built = subprocess.run(
        [str(target / "bin" / "kreport"), "build", "run", "-o", "report.html"], cwd=outside,
        env=env, capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    assert '<h1 id="run-name">run</h1>' in (outside / "report.html").read_text()


FRAMEWORKS = ("tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch")


def test_installing_pulls_no_deep_learning_framework(wheel, tmp_path):
    # What pip would install into an empty environment, resolved against the
    # package index (--ignore-installed: as if nothing were there).
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
         "--report", str(report), str(wheel)],
        check=True,
    )
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"kcallbacks", "keras", "pandas", "plotly", "tensorboard", "click"} <= installed
    assert installed.isdisjoint(FRAMEWORKS), sorted(installed & set(FRAMEWORKS))


BLOCK_FRAMEWORKS = '''
import sys

class NoFramework:
    """Makes the frameworks unimportable, as where none is installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "jax", "jaxlib", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoFramework())
'''


def test_kreport_works_where_no_framework_is_installed(tmp_path, real_run):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_FRAMEWORKS)
    env = dict(os.environ, PYTHONPATH=str(blocker))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0  # the blocker works
    kreport = os.path.join(os.path.dirname(sys.executable), "kreport")

    def run(*args):
        result = subprocess.run([kreport, *args], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("build", str(real_run), "-o", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 1_000_000  # plotly.js embedded
    assert json.loads(run("summary", "--json", str(real_run)))["status"] == "stopped_early"
    run("tensorboard", str(real_run), "--logdir", str(tmp_path / "tb"))
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))
