"""What kreport build, summary and compare say about a real run, checked
against the run's own files."""

import base64
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import plotly.offline
import pytest

import kcallbacks
from kreport import charts

# Behavioural: CI runs this file on every backend.
pytestmark = pytest.mark.all_backends

KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")


def kreport(*args):
    result = subprocess.run([KREPORT, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def decode(array):
    """A plotly JSON array: a list, or numpy bytes in base64 ("bdata")."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.array(array, dtype="float64")


@pytest.fixture(scope="module")
def built(real_run, tmp_path_factory):
    report = tmp_path_factory.mktemp("built") / "report.html"
    kreport("build", str(real_run), "-o", str(report))
    html = report.read_text(encoding="utf-8")
    figures = json.loads(
        re.search(r'<script type="application/json" id="kreport-figures">(.*?)</script>', html, re.S).group(1)
    )
    return html, figures, kcallbacks.load_run(real_run)


def test_report_is_self_contained(built):
    html, _, _ = built
    bundle = plotly.offline.get_plotlyjs()
    assert html.count(bundle) == 1  # plotly.js, embedded once
    # Outside the bundle (whose map tiles and logo links the charts never
    # use) the page names no URL at all.
    page = html.replace(bundle, "")
    assert not re.search(r"https?:|//[a-z]", page) and "<link" not in page
    assert len(page) < 200_000


def test_charts_hold_the_history_and_batches(built):
    _, figures, run = built
    history, batches = run.history, run.batches
    assert [f["layout"]["title"]["text"] for f in figures] == [
        "accuracy", "loss", f"Per-batch loss ({len(batches)} steps)", "Learning rate",
    ]
    for figure, metric in zip(figures[:2], ("accuracy", "loss")):
        traces = {t["name"]: t for t in figure["data"]}
        for name in (metric, f"val_{metric}"):
            np.testing.assert_array_equal(decode(traces[name]["x"]), history["epoch"])
            np.testing.assert_allclose(decode(traces[name]["y"]), history[name])
        # Event markers sit at their epochs on the validation curve.
        saved = run.events[run.events["type"] == "checkpoint_saved"]
        np.testing.assert_array_equal(decode(traces["checkpoint saved"]["x"]), saved["epoch"])
        assert decode(traces["resumed"]["x"]).tolist() == [3]
        assert decode(traces["early stop"]["x"]).tolist() == [4]
        stop = run.events[run.events["type"] == "early_stop"].iloc[0]
        assert f"best epoch {int(stop['best_epoch'])}" in traces["early stop"]["hovertext"][0]
    batch_traces = {t["name"]: t for t in figures[2]["data"]}
    np.testing.assert_array_equal(decode(batch_traces["batch loss"]["x"]), batches["step"])
    means = batches.groupby("epoch")["loss"].mean().to_numpy()
    np.testing.assert_allclose(decode(batch_traces["epoch mean"]["y"]), means, rtol=1e-6)
    np.testing.assert_allclose(decode(figures[3]["data"][0]["y"]), history["learning_rate"])


def test_key_numbers_tables_and_configuration(built):
    html, _, run = built
    history = run.history
    best = int(history["val_loss"].idxmin())
    monitored = re.search(r"<tr><td>val_loss</td>(.*?)</tr>", html).group(1)
    assert f'<td class="num">{history["val_loss"][best]:.4g}</td><td class="num">{best}</td>' in monitored
    assert "ReduceLROnPlateau, EarlyStopping" in monitored
    for metric in ("loss", "accuracy", "val_accuracy"):
        assert f'<tr><td>{metric}</td><td class="num">{history[metric].iloc[-1]:.4g}</td>' in html
    saved = run.events[run.events["type"] == "checkpoint_saved"]
    best_path = saved["path"].iloc[-1]
    assert f'<code id="best-checkpoint">{best_path}</code>' in html
    assert html.count("<td><code>checkpoints/") == len(saved)
    assert "2410 parameters (2410 trainable)" in html
    assert "Trainable params: 2,410" in html  # Keras' own model summary
    assert '<td id="distribution">one device, no distribution strategy</td>' in html
    backend = run.manifest["environment"]
    assert f'<td id="backend">{backend["backend"]} {backend["backend_version"]}</td>' in html
    assert backend["backend"] == keras.backend.backend()
    assert "<h3>Callback: kcallbacks.early_stopping.EarlyStopping</h3>" in html
    assert "<h3>Optimizer: Adam</h3>" in html
    assert 'id="warnings"' not in html


def test_summary_table_and_json(real_run):
    history = kcallbacks.load_run(real_run).history
    data = json.loads(kreport("summary", "--json", str(real_run)).stdout)
    assert data["status"] == "stopped_early" and data["resumes"] == 1
    assert data["backend"].split()[0] == keras.backend.backend()
    assert data["epochs"] == len(history) and data["epochs_planned"] == 10
    val_loss = data["monitored"]["val_loss"]
    assert val_loss["best"] == pytest.approx(history["val_loss"].min())
    assert val_loss["best_epoch"] == int(history["val_loss"].idxmin())
    assert data["metrics"]["accuracy"]["final"] == pytest.approx(history["accuracy"].iloc[-1])
    assert data["metrics"]["accuracy"]["mode"] == "max"
    assert data["best_checkpoint"].startswith("checkpoints/05-")
    assert data["warnings"] == []

    text = kreport("summary", str(real_run)).stdout
    assert re.search(r"^status +stopped early at epoch 4, resumed 1 time$", text, re.M)
    assert re.search(rf"^best +val_loss {history['val_loss'].min():.4g} at epoch 4 \(min\)$", text, re.M)
    row = re.search(r"^loss +(\S+) +(\S+) +(\d+)$", text, re.M)
    assert float(row.group(1)) == pytest.approx(history["loss"].iloc[-1], rel=1e-3)


def test_compare_tables(real_run, tmp_path):
    from run_factory import small_run

    other = small_run(tmp_path / "small")
    report = tmp_path / "compare.html"
    kreport("compare", str(real_run), other.path, "-o", str(report))
    html = report.read_text(encoding="utf-8")
    best_row = re.search(r'<td class="run-label">small</td>(.*?)</tr>', html, re.S).group(1)
    # small's val_loss 1.2/5 and val_accuracy 0.45 + 4/20, both at epoch 4.
    cells = r'<td class="num(?: objective)?">(\S+) <span class="muted">\((\d+)\)</span></td>'
    assert sorted(re.findall(cells, best_row)) == [("0.24", "4"), ("0.65", "4")]
    differences = re.search(r'<section id="config-differences">(.*?)</section>', html, re.S).group(1)
    # A column per run, in the table's order.
    order = re.findall(r"<th>(small|digits-run)</th>", differences)
    epochs = {"digits-run": "10", "small": "5"}
    assert "<th>fit.epochs</th>" + "".join(
        f"<td><code>{epochs[name]}</code></td>" for name in order) in differences
    assert "callbacks.EarlyStopping.monitor" in differences


def test_minmax_downsampling_keeps_spikes_and_gaps():
    rng = np.random.default_rng(1)
    values = rng.random(1_000_000)
    spikes = rng.choice(len(values), 25, replace=False)
    values[spikes] = 50.0
    values[123_456] = -50.0
    values[777_777] = np.nan
    keep = charts.minmax_indices(values, max_points=4000)
    assert len(keep) <= 4000 + 2 + 1
    assert set(spikes) | {123_456, 777_777, 0, len(values) - 1} <= set(keep.tolist())
    assert np.all(np.diff(keep) > 0)
    # Plain striding at the same budget would have lost nearly all of them.
    stride = np.arange(0, len(values), len(values) // 4000)
    assert len(set(spikes) & set(stride.tolist())) < 5


def test_epoch_means_weight_by_batch_size():
    steps = np.arange(6)
    epochs = np.array([0, 0, 0, 1, 1, 1])
    values = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    sizes = np.array([10, 30, 10, 10, 10, 0])
    centers, means = charts.epoch_means(steps, epochs, values, sizes)
    np.testing.assert_allclose(centers, [1.0, 4.0])
    np.testing.assert_allclose(means, [(10 + 60) / 40, (40 + 50 + 6) / 21])


def test_metric_logged_every_other_epoch(tmp_path):
    """As with `validation_freq=2`: absent epochs are skipped, not NaN."""
    from kcallbacks.run_directory import RunDirectory
    from kreport import analysis

    run_dir = RunDirectory(tmp_path / "run", create=True)
    for epoch in range(6):
        row = {"epoch": epoch, "loss": 1.0 / (epoch + 1)}
        if epoch % 2:
            row["val_loss"] = 2.0 / (epoch + 1)
        run_dir.append_history(row)
    run = kcallbacks.load_run(run_dir.path)
    summary = analysis.summarize(run)
    val_loss = next(q for q in summary.quantities if q.name == "val_loss")
    assert (val_loss.final, val_loss.best_epoch) == (2.0 / 6, 5)
    assert "val_loss was recorded in 3 of 6 epochs only (1, 3, 5)" in summary.warnings
    figure = charts.metric_figure(run, "loss", "loss", "val_loss", summary.markers)
    validation = next(t for t in figure["data"] if t["name"] == "val_loss")
    np.testing.assert_array_equal(validation["x"], [1, 3, 5])
    assert not np.isnan(validation["y"]).any()
