"""HistoryLogger with real fits: rows, late metrics, non-finite values, resume, SIGKILL."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest

import kcallbacks
from training import AddLogs, digits_data, digits_model

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def fit(model, run_dir, epochs, callbacks=(), **kwargs):
    x, y = digits_data()
    kwargs.setdefault("batch_size", 64)
    return model.fit(
        x, y, epochs=epochs, verbose=0,
        callbacks=[*callbacks, kcallbacks.HistoryLogger(run_dir)], **kwargs,
    )


@pytest.mark.all_backends
def test_rows_equal_keras_history(tmp_path):
    run_dir = tmp_path / "run"
    history = fit(digits_model(), run_dir, epochs=4, validation_split=0.25)

    run = kcallbacks.load_run(run_dir)
    assert list(run.history["epoch"]) == [0, 1, 2, 3]
    for key, values in history.history.items():
        np.testing.assert_allclose(run.history[key].to_numpy(), values, rtol=0, atol=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    np.testing.assert_allclose(run.history["learning_rate"], 0.01, rtol=1e-6)
    assert (run.history["epoch_time"] > 0).all()
    assert run.history["wall_time"].is_monotonic_increasing
    assert run.warnings == []

    # The CSV holds the same rows as the JSON lines.
    csv = pd.read_csv(run_dir / "history.csv")
    assert list(csv.columns) == list(run.history.columns)
    pd.testing.assert_frame_equal(csv, run.history, check_dtype=False)

    manifest = run.manifest
    assert manifest["schema_version"] == 1
    assert manifest["status"] == "finished"
    assert manifest["fit_params"]["epochs"] == 4
    assert manifest["model"]["total_params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert "Dense" in manifest["model"]["summary"]
    assert manifest["optimizer"]["class"] == "Adam"
    assert manifest["environment"]["keras"] == keras.__version__
    assert [a["initial_epoch"] for a in manifest["attempts"]] == [0]
    classes = [c["class"].rsplit(".", 1)[-1] for c in manifest["callbacks"]]
    assert classes[:1] == ["HistoryLogger"] and "History" in classes


@pytest.mark.all_backends
def test_metric_that_appears_mid_run_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    late = AddLogs({"late_metric": lambda epoch: epoch * 1.5}, from_epoch=2)
    fit(digits_model(), run_dir, epochs=4, callbacks=[late])

    history = kcallbacks.load_run(run_dir).history
    assert history["late_metric"].isna().tolist() == [True, True, False, False]
    assert history["late_metric"].tolist()[2:] == [3.0, 4.5]
    csv = pd.read_csv(run_dir / "history.csv")
    assert "late_metric" in csv.columns
    assert csv["late_metric"].tolist()[2:] == [3.0, 4.5]
    assert csv["loss"].notna().all()


@pytest.mark.all_backends
def test_non_finite_values_are_written_and_read_back(tmp_path):
    run_dir = tmp_path / "run"
    # A learning rate this large makes a real regression diverge to inf/NaN.
    keras.utils.set_random_seed(0)
    x = np.random.rand(256, 8).astype("float32") * 100
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e3), loss="mse")
    extra = AddLogs({"pos_inf": math.inf, "neg_inf": -math.inf})
    history = model.fit(
        x, y, epochs=4, batch_size=32, verbose=0,
        callbacks=[extra, kcallbacks.HistoryLogger(run_dir)],
    )
    assert not np.isfinite(history.history["loss"][-1])

    run = kcallbacks.load_run(run_dir)
    assert not np.isfinite(run.history["loss"].iloc[-1])
    assert (run.history["pos_inf"] == math.inf).all()
    assert (run.history["neg_inf"] == -math.inf).all()
    csv = pd.read_csv(run_dir / "history.csv")
    assert (csv["pos_inf"] == math.inf).all() and (csv["neg_inf"] == -math.inf).all()
    assert np.isnan(csv["loss"].iloc[-1]) or np.isinf(csv["loss"].iloc[-1])
    assert "non_finite" in set(run.events["type"])


@pytest.mark.all_backends
def test_resumed_fit_replaces_rows_from_the_resumed_epoch(tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "train_history.py"), str(run_dir), "5"],
        check=True, stdout=subprocess.DEVNULL,
    )
    first = kcallbacks.load_run(run_dir).history

    # A new process's fit that restarts at epoch 2 (as a restore from a
    # backup taken after epoch 1 would) must not leave epochs 2-4 twice.
    # (A later fit of the same process continues the run instead: see
    # test_fit_sequence.)
    second = fit(digits_model(), run_dir, epochs=4, initial_epoch=2)

    run = kcallbacks.load_run(run_dir)
    assert run.history["epoch"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(run.history.iloc[:2], first.iloc[:2])
    np.testing.assert_array_equal(run.history["loss"].iloc[2:], second.history["loss"])
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]
    truncated = run.events[run.events["type"] == "history_truncated"]
    assert truncated["rows_dropped"].tolist() == [3]
    assert [a["initial_epoch"] for a in run.manifest["attempts"]] == [0, 2]


def test_status_says_stopped_early(tmp_path):
    run_dir = tmp_path / "run"
    flat = AddLogs({"flat": 1.0})
    stop = keras.callbacks.EarlyStopping(monitor="flat", mode="min", patience=1)
    fit(digits_model(), run_dir, epochs=10, callbacks=[flat, stop])
    run = kcallbacks.load_run(run_dir)
    assert len(run.history) == 2
    assert run.manifest["status"] == "stopped_early"


def _train_and_kill(run_dir, kill_after_epoch, delay):
    process = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "train_history.py"), str(run_dir), "1000"],
        stdout=subprocess.PIPE, text=True,
    )
    announced = []
    try:
        for line in process.stdout:
            if line.startswith("EPOCH_DONE"):
                announced.append(int(line.split()[1]))
                if announced[-1] >= kill_after_epoch:
                    time.sleep(delay)
                    break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return announced


@pytest.mark.parametrize("delay", [0.0, 0.04])
def test_sigkill_leaves_a_readable_history(tmp_path, delay):
    run_dir = tmp_path / "run"
    announced = _train_and_kill(run_dir, kill_after_epoch=3, delay=delay)

    run = kcallbacks.load_run(run_dir)
    epochs = run.history["epoch"].tolist()
    # Every epoch the logger finished is there, once, in order, and whole.
    assert epochs == list(range(len(epochs)))
    assert set(announced) <= set(epochs)
    assert run.history[["loss", "accuracy", "learning_rate"]].notna().all().all()
    assert run.manifest["status"] == "running"
    for line in (run_dir / "history.jsonl").read_text().splitlines()[: len(announced)]:
        json.loads(line)


def test_manifest_says_when_no_strategy_is_used(tmp_path):
    run_dir = tmp_path / "run"
    fit(digits_model(), run_dir, epochs=1)
    assert kcallbacks.load_run(run_dir).manifest["distribution"] == {
        "strategy": None, "replicas": 1, "workers": 1,
    }
