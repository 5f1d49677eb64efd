"""`kreport tensorboard`'s HParams dashboard, read back through a real
TensorBoard server's hparams plugin on 127.0.0.1, with the requests the
TensorBoard frontend sends."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

import kcallbacks
from run_factory import small_run
from test_tensorboard_export import BIN, TensorBoardServer

STATUSES = ["STATUS_FAILURE", "STATUS_RUNNING", "STATUS_SUCCESS", "STATUS_UNKNOWN"]
AUTOMATIC = ["optimizer", "learning_rate", "batch_size", "epochs", "params"]


class HParamsServer(TensorBoardServer):
    def post(self, path, body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def experiment(self):
        # As the frontend's runs table asks (it sends no includeMetrics to get them).
        return self.post("/data/plugin/hparams/experiment", {"experimentName": "", "hparamsLimit": 1000})

    def session_groups(self):
        return self.post("/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": STATUSES, "colParams": [],
            "startIndex": 0, "sliceSize": 1_000_000, "includeMetrics": True,
        })

    def wait_for_sessions(self, count, metrics, timeout=90):
        """Polls until `count` sessions, each with `metrics` metric values,
        are loaded; returns {session group name: group}."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, "tensorboard exited"
            try:
                groups = self.session_groups()["sessionGroups"]
                if len(groups) >= count and all(
                    len(s.get("metricValues", [])) >= metrics for g in groups for s in g["sessions"]
                ):
                    return {group["name"]: group for group in groups}
            except OSError:  # not up yet
                pass
            assert time.monotonic() < deadline, "tensorboard did not load the sessions in time"
            time.sleep(0.5)


def kreport_tensorboard(*args):
    result = subprocess.run([os.path.join(BIN, "kreport"), "tensorboard", *map(str, args)],
                            capture_output=True, text=True)
    assert "Traceback" not in result.stderr
    return result


def last_epoch_metrics(path):
    """{history column: the last epoch's value, as a float32 scalar holds it}."""
    history = kcallbacks.load_run(path).history
    last = history.iloc[-1]
    return {column: float(np.float32(last[column]))
            for column in ("loss", "accuracy", "val_loss", "val_accuracy")}, int(last["epoch"])


def metric_values(session):
    return {(v["name"]["group"], v["name"]["tag"]): (v["value"], v["trainingStep"]) for v in session["metricValues"]}


def make_study(root):
    """Four runs at several depths, of every status the plugin tells apart,
    and a fifth that must be skipped (in a directory whose name starts with a dot)."""
    a = small_run(root / "adam" / "lr-0.01")
    a.update_manifest(hparams={
        "optimizer": "Adam", "learning_rate": 0.01, "batch_size": 32, "epochs": 5, "params": 1234,
        "units": 64, "dropout": 0.25, "augment": True, "activation": "relu", "unset": None,
    }, hparams_automatic=AUTOMATIC)
    b = small_run(root / "sgd" / "deeper" / "lr-0.1", epochs=3)
    b.update_manifest(status="preempted", hparams={
        "optimizer": "SGD", "learning_rate": 0.1, "batch_size": 64, "epochs": 10, "params": 1234,
        "units": "auto", "augment": False,
        # Malformed: skipped with a warning, no traceback.
        "layers": [64, 32], "nested": {"a": 1}, "huge": 10**400, "nan": float("nan"),
    }, hparams_automatic=AUTOMATIC + ["layers", 7])
    c = small_run(root / "running", epochs=2)
    c.update_manifest(status="running", hparams={"optimizer": "Adam", "learning_rate": 0.001},
                      hparams_automatic="not a list")
    small_run(root / "old", epochs=4)  # written before hparams existed: no hparams
    small_run(root / ".trash" / "deleted")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run")


def test_study_lists_every_run_as_a_session(tmp_path):
    study = tmp_path / "study"
    make_study(study)
    for _ in range(2):  # the second export replaces the first: nothing doubled
        result = kreport_tensorboard(study)
        assert result.returncode == 0, result.stderr
    assert "HParams: 4 sessions" in result.stdout
    for name in ("layers", "nested", "huge", "nan"):
        assert f"sgd/deeper/lr-0.1: run.json: hparams['{name}']" in result.stderr
    assert "hparams_automatic is not a list" in result.stderr

    logdir = study / "tensorboard"  # the default: DIR/tensorboard
    runs = ["adam/lr-0.01", "old", "running", "sgd/deeper/lr-0.1"]
    for run in runs:
        for sub in ("", "train", "validation"):
            assert len(list((logdir / run / sub).glob("*.kreport"))) == 1, (run, sub)
    assert len(list(logdir.glob("*.kreport"))) == 1  # the experiment
    assert not (logdir / ".trash").exists() and not (logdir / "tensorboard").exists()

    server = HParamsServer(logdir, tmp_path)
    try:
        groups = server.wait_for_sessions(len(runs), 4)
        experiment = server.experiment()
        response = server.session_groups()
    finally:
        server.stop()

    # Every run once, each its own group with one session: nothing doubled.
    assert response["totalSize"] == len(runs)
    assert sorted(groups) == runs
    for name, group in groups.items():
        assert [session["name"] for session in group["sessions"]] == [name]

    # Exact hparam values; numbers as float64, `units` (a number in one run,
    # a string in another) as strings; nulls and malformed values left out.
    assert groups["adam/lr-0.01"]["hparams"] == {
        "optimizer": "Adam", "learning_rate": 0.01, "batch_size": 32.0, "epochs": 5.0, "params": 1234.0,
        "units": "64", "dropout": 0.25, "augment": True, "activation": "relu",
    }
    assert groups["sgd/deeper/lr-0.1"]["hparams"] == {
        "optimizer": "SGD", "learning_rate": 0.1, "batch_size": 64.0, "epochs": 10.0, "params": 1234.0,
        "units": "auto", "augment": False,
    }
    assert groups["running"]["hparams"] == {"optimizer": "Adam", "learning_rate": 0.001}
    assert groups["old"].get("hparams", {}) == {}

    statuses = {name: group["sessions"][0]["status"] for name, group in groups.items()}
    assert statuses == {"adam/lr-0.01": "STATUS_SUCCESS", "sgd/deeper/lr-0.1": "STATUS_FAILURE",
                        "running": "STATUS_RUNNING", "old": "STATUS_SUCCESS"}

    # The experiment: the union of the hparams, with their domains.
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert sorted(infos) == sorted(["optimizer", "learning_rate", "batch_size", "epochs", "params",
                                    "units", "dropout", "augment", "activation"])
    assert infos["learning_rate"]["type"] == "DATA_TYPE_FLOAT64"
    assert infos["learning_rate"]["domainInterval"] == {"minValue": 0.001, "maxValue": 0.1}
    assert infos["batch_size"]["domainInterval"] == {"minValue": 32.0, "maxValue": 64.0}
    assert infos["params"]["differs"] is False and infos["learning_rate"]["differs"] is True
    assert infos["optimizer"]["type"] == "DATA_TYPE_STRING"
    assert infos["optimizer"]["domainDiscrete"] == ["Adam", "SGD"]
    assert infos["units"]["type"] == "DATA_TYPE_STRING" and infos["units"]["domainDiscrete"] == ["64", "auto"]
    assert infos["augment"]["type"] == "DATA_TYPE_BOOL" and infos["augment"]["domainDiscrete"] == [False, True]
    assert infos["activation"]["domainDiscrete"] == ["relu"]
    # Marked as recorded automatically where every run that has it says so
    # (not `optimizer` and `learning_rate`: the running run's list is not one).
    for name in ("batch_size", "epochs", "params"):
        assert "automatically" in infos[name]["description"], name
    for name in ("optimizer", "learning_rate", "units"):
        assert "automatically" not in infos[name].get("description", ""), name

    # The metrics: the epoch scalars, in their sub-runs.
    names = {(m["name"]["group"], m["name"]["tag"]): m for m in experiment["metricInfos"]}
    assert sorted(names) == [("train", "epoch_accuracy"), ("train", "epoch_loss"),
                             ("validation", "epoch_accuracy"), ("validation", "epoch_loss")]
    assert names["validation", "epoch_loss"]["displayName"] == "val_loss"
    assert names["validation", "epoch_loss"]["datasetType"] == "DATASET_VALIDATION"
    assert names["train", "epoch_loss"]["datasetType"] == "DATASET_TRAINING"

    # Each session's metric values: its last epoch's.
    for name, group in groups.items():
        last, epoch = last_epoch_metrics(study / name)
        assert metric_values(group["sessions"][0]) == {
            ("train", "epoch_loss"): (last["loss"], epoch),
            ("train", "epoch_accuracy"): (last["accuracy"], epoch),
            ("validation", "epoch_loss"): (last["val_loss"], epoch),
            ("validation", "epoch_accuracy"): (last["val_accuracy"], epoch),
        }, name


@pytest.mark.parametrize("hparams", [True, False], ids=["with-hparams", "old-run"])
def test_a_lone_run_is_a_session_in_its_logdir(tmp_path, hparams):
    """A single run keeps its layout (LOGDIR/train, LOGDIR/validation), with
    its session and the experiment at LOGDIR; a run from before hparams were
    recorded still exports, a session without any."""
    run = small_run(tmp_path / "runs" / "run", epochs=3)
    if hparams:
        run.update_manifest(hparams={"optimizer": "Adam", "learning_rate": 0.01, "batch_size": 16,
                                     "epochs": 3, "params": 99, "note": "baseline"},
                            hparams_automatic=AUTOMATIC)
    for _ in range(2):
        result = kreport_tensorboard(run.path)
        assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "HParams: 1 session" in result.stdout
    logdir = tmp_path / "runs" / "run" / "tensorboard"
    names = sorted(os.listdir(logdir))  # the layout of before, and the hparams file
    assert names[1:] == ["train", "validation"] and names[0].endswith(".kreport")
    for directory in (logdir, logdir / "train", logdir / "validation"):
        assert len(list(directory.glob("*.kreport"))) == 1
    expected = ({"optimizer": "Adam", "learning_rate": 0.01, "batch_size": 16.0, "epochs": 3.0,
                 "params": 99.0, "note": "baseline"} if hparams else {})
    last, epoch = last_epoch_metrics(run.path)

    # `tensorboard --logdir LOGDIR`: the session is the run TensorBoard names ".".
    server = HParamsServer(logdir, tmp_path)
    try:
        groups = server.wait_for_sessions(1, 0)
        experiment = server.experiment()
        tags = server.wait_for_tags({"train": ["epoch_loss", "batch_loss"], "validation": ["epoch_loss"]})
    finally:
        server.stop()
    assert list(groups) == ["."]
    [session] = groups["."]["sessions"]
    assert session["status"] == "STATUS_SUCCESS"
    assert groups["."].get("hparams", {}) == expected
    assert sorted(info["name"] for info in experiment["hparamInfos"]) == sorted(expected)
    assert {(m["name"]["group"], m["name"]["tag"]): m["displayName"] for m in experiment["metricInfos"]} == {
        ("train", "epoch_loss"): "loss", ("train", "epoch_accuracy"): "accuracy",
        ("validation", "epoch_loss"): "val_loss", ("validation", "epoch_accuracy"): "val_accuracy",
    }
    # The Scalars dashboard's runs and tags are as before: no "." run.
    assert set(tags) == {"train", "validation"}
    assert set(tags["train"]) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "batch_loss"}
    assert set(tags["validation"]) == {"epoch_loss", "epoch_accuracy"}

    # From a directory above LOGDIR, the plugin finds the metrics too.
    server = HParamsServer(tmp_path / "runs", tmp_path)
    try:
        groups = server.wait_for_sessions(1, 4)
    finally:
        server.stop()
    assert list(groups) == ["run/tensorboard"]
    assert groups["run/tensorboard"].get("hparams", {}) == expected
    assert metric_values(groups["run/tensorboard"]["sessions"][0]) == {
        ("train", "epoch_loss"): (last["loss"], epoch),
        ("train", "epoch_accuracy"): (last["accuracy"], epoch),
        ("validation", "epoch_loss"): (last["val_loss"], epoch),
        ("validation", "epoch_accuracy"): (last["val_accuracy"], epoch),
    }


def test_study_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    for path in (empty, tmp_path / "missing"):
        result = kreport_tensorboard(path)
        assert result.returncode == 2
        assert result.stderr.startswith("kreport: error: ") and result.stderr.count("\n") == 1
    assert "neither a run directory nor a directory holding runs" in kreport_tensorboard(empty).stderr

    study = tmp_path / "study"
    small_run(study / "good")
    small_run(study / "bad")
    (study / "bad" / "run.json").write_text("{torn")  # a corrupted manifest: skipped, not fatal
    result = kreport_tensorboard(study)
    assert result.returncode == 0, result.stderr
    assert "corrupted manifest" in result.stderr and "run skipped" in result.stderr
    assert (study / "tensorboard" / "good" / "train").is_dir()
    assert not (study / "tensorboard" / "bad").exists()

    result = kreport_tensorboard(study, "--logdir", study)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert not (study / "good" / "train").exists()


def test_help_describes_hparams_and_studies():
    result = kreport_tensorboard("--help")
    assert result.returncode == 0
    for words in ("HParams", "study", "LOGDIR/PATH", "interval", "no point is"):
        assert words in result.stdout, words


def test_hparams_export_imports_no_framework(tmp_path):
    """The HParams summaries are built without TensorFlow (whose own
    builders import it), Keras, JAX or PyTorch."""
    probe = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from click.testing import CliRunner
from kreport.main import cli
from run_factory import small_run

for name in ("a", "b"):
    small_run({str(tmp_path / "study")!r} + "/" + name).update_manifest(hparams={{"units": 8}})
for args in (["tensorboard", {str(tmp_path / "study")!r}], ["tensorboard", {str(tmp_path / "study" / "a")!r}]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.output)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'jax', 'torch')))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert len(list((tmp_path / "study" / "tensorboard" / "b").glob("*.kreport"))) == 1
    assert len(list((tmp_path / "study" / "a" / "tensorboard").glob("*.kreport"))) == 1
