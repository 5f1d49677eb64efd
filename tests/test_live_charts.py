"""LiveCharts: live charts in a real Jupyter kernel's cell output, and
nothing at all outside one."""

import html
import re
import sys
import textwrap
import threading
import time

import keras
import numpy as np
import pytest

import kcallbacks
from kcallbacks.live_charts import MAX_LOSS_POINTS, THREAD_NAME, LiveView
from kcallbacks.run_directory import RunDirectory
from training import digits_data, digits_model

EPOCHS = 6

SETUP = """
import sys, threading, time
import numpy as np
import keras
import kcallbacks

print(sys.executable)
x = np.random.default_rng(0).random((256, 8), dtype=np.float32)
y = (x.sum(axis=1) > 4).astype("int32")

def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model
"""

# Each epoch logs a metric named like markup, and sleeps, so that the
# 0.3 s redraws see the epochs one by one.
LIVE_FIT = f"""
markup = keras.callbacks.LambdaCallback(
    on_epoch_end=lambda epoch, logs: logs.update({{"<b>x": float(epoch)}}))
slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(0.5))
history = make_model().fit(
    x, y, validation_split=0.25, batch_size=16, epochs={EPOCHS}, verbose=0,
    callbacks=[markup] + kcallbacks.standard_callbacks("live", live=True, live_every=0.3) + [slow])
"""

RAISING_FIT = """
def fail(epoch, logs):
    if epoch == 1:
        raise RuntimeError("boom")

try:
    make_model().fit(x, y, epochs=4, verbose=0, callbacks=[
        kcallbacks.HistoryLogger("raised"), kcallbacks.LiveCharts(every=0.1),
        keras.callbacks.LambdaCallback(on_epoch_end=fail)])
except RuntimeError:
    print("the fit raised")
"""

AFTER_RAISING_FIT = """
time.sleep(1.0)  # several of the 0.1 s ticks of a drawer that would still run
print(sorted(t.name for t in threading.enumerate()))
"""

# The run directory is damaged once the fit is over: no report can be built.
UNREPORTABLE_FIT = """
class BreakTheManifest(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        with open("broken/run.json", "w") as f:
            f.write("{torn")

make_model().fit(x, y, epochs=2, verbose=0, callbacks=[
    kcallbacks.HistoryLogger("broken"), BreakTheManifest(), kcallbacks.LiveCharts(every=0.1)])
print("the fit returned")
"""

NO_RUN_DIRECTORY_FITS = """
lonely = kcallbacks.LiveCharts(every=0.1)
for _ in range(2):
    make_model().fit(x, y, epochs=1, verbose=0, callbacks=[lonely])
"""

NOT_CHIEF_FIT = """
from kcallbacks.writer_role import set_chief

set_chief(False)  # as on a worker of a multi-process job
try:
    make_model().fit(x, y, validation_split=0.25, epochs=2, verbose=0,
                     callbacks=kcallbacks.standard_callbacks("worker", live=True, live_every=0.1))
finally:
    set_chief(None)
print(sorted(t.name for t in threading.enumerate()))
"""


def run_notebook(cells, directory):
    """Executes the cells in a real Jupyter kernel (the venv's Python, with
    this process's environment, in `directory`); returns the executed
    notebook and every kernel message of each cell, in arrival order."""
    import nbformat
    from nbclient import NotebookClient

    class RecordingClient(NotebookClient):
        def process_message(self, msg, cell, cell_index):
            messages[cell_index].append(msg)
            return super().process_message(msg, cell, cell_index)

    messages = [[] for _ in cells]
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent(source)) for source in cells]
    # jupyter_client runs a kernel spec whose command is `python` (the venv's
    # python3 spec) with this interpreter; SETUP prints it, the test checks.
    client = RecordingClient(notebook, kernel_name="python3", timeout=180,
                             resources={"metadata": {"path": str(directory)}})
    client.execute()
    return notebook, messages


def displays(messages):
    """(display_id, data) of each display and display update that has a
    display id, in order."""
    return [
        (msg["content"]["transient"]["display_id"], msg["content"]["data"])
        for msg in messages
        if msg["msg_type"] in ("display_data", "update_display_data")
        and (msg["content"].get("transient") or {}).get("display_id")
    ]


def stream(notebook, index, name):
    return "".join(o.text for o in notebook.cells[index].outputs
                   if o.output_type == "stream" and o.name == name)


def stdout(notebook, index):
    return stream(notebook, index, "stdout")


# The display only reads the run directory, which the other callbacks'
# tests cover on every backend; what this adds is the kernel side, the
# same on all backends, so it runs on the default one (a kernel and a
# backend import cost ~10 s per backend).
def test_a_fit_in_a_jupyter_kernel_shows_live_charts_then_the_report(tmp_path):
    notebook, messages = run_notebook(
        [SETUP, LIVE_FIT, RAISING_FIT, AFTER_RAISING_FIT, UNREPORTABLE_FIT,
         NO_RUN_DIRECTORY_FITS, NOT_CHIEF_FIT],
        tmp_path)
    assert stdout(notebook, 0).strip() == sys.executable

    shown = displays(messages[1])
    ids = {display_id for display_id, _ in shown}
    assert len(ids) == 1, "one display, updated in place"
    *live, (_, final) = shown

    # During the fit: each redraw shows more epochs, several of them
    # before the last epoch's row existed.
    statuses = [data["text/plain"].splitlines()[0] for _, data in live]
    epochs_done = [int(re.search(r"epoch (\d+) of 6", s).group(1)) for s in statuses]
    assert epochs_done == sorted(epochs_done)
    assert len({n for n in epochs_done if 0 < n < EPOCHS}) >= 2, statuses
    assert any(re.search(r"step \d+ loss \d", s) for s in statuses), statuses
    assert any(re.search(r"best val_loss \d\S* \(epoch \d\)", s) for s in statuses), statuses
    drawn = [data["text/html"] for _, data in live if "<svg" in data["text/html"]]
    assert len(set(drawn)) >= 2, "the charts change"
    last = drawn[-1]
    for title in ("loss", "accuracy", "per-batch loss", "learning rate"):
        assert f'<tspan font-weight="bold">{title}</tspan>' in last
    assert "epoch mean" in last
    assert "&lt;b&gt;x" in last and "<b>x" not in last

    # At the end: the report kreport builds, in an iframe; in the saved
    # notebook, the display holds it.
    assert final["text/html"].startswith('<iframe srcdoc="')
    document = html.unescape(final["text/html"].split('srcdoc="', 1)[1].split('" style=', 1)[0])
    assert 'id="kreport-figures"' in document and "Plotly" in document
    assert "&lt;b&gt;x" in document
    assert [o.data["text/html"] for o in notebook.cells[1].outputs
            if o.output_type == "display_data" and "iframe" in o.data.get("text/html", "")] == [
        final["text/html"]]

    # A fit that raises leaves no drawing thread once its cell is over.
    assert stdout(notebook, 2) == "the fit raised\n"
    assert len(displays(messages[2])) >= 1
    assert THREAD_NAME not in stdout(notebook, 3)

    # No report: the charts stay, with a note, and the fit returns.
    *_, (_, unreported) = displays(messages[4])
    assert "<svg" in unreported["text/html"]
    assert "no report: RunDirectoryError" in unreported["text/plain"]
    assert stdout(notebook, 4) == "the fit returned\n"

    # Nothing to show without a run directory, and it says so once.
    assert displays(messages[5]) == []
    assert stream(notebook, 5, "stderr").count("LiveCharts: no run directory to show") == 1

    # Only the process that writes the run shows charts.
    assert displays(messages[6]) == []
    assert THREAD_NAME not in stdout(notebook, 6)
    assert not (tmp_path / "worker").exists()


def _fit(run_dir, live, seen_threads):
    x, y = digits_data(256)
    watch = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen_threads.update(t.name for t in threading.enumerate()))
    callbacks = kcallbacks.standard_callbacks(run_dir, live=live, live_every=0.01)
    digits_model().fit(x, y, validation_split=0.25, epochs=3, verbose=0,
                       callbacks=callbacks + [watch])
    return kcallbacks.load_run(run_dir)


@pytest.mark.all_backends
@pytest.mark.parametrize("python", ["plain", "terminal IPython"])
def test_outside_a_notebook_it_does_nothing(tmp_path, capsys, python):
    if python == "terminal IPython":
        # An IPython shell that is not a Jupyter kernel, with ipykernel loaded.
        import ipykernel.zmqshell  # noqa: F401
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False
        InteractiveShell.instance(config=config)
    try:
        seen_threads = set()
        with_live = _fit(tmp_path / "live", True, seen_threads)
    finally:
        if python == "terminal IPython":
            InteractiveShell.clear_instance()
    without = _fit(tmp_path / "plain", False, set())

    assert THREAD_NAME not in seen_threads
    assert THREAD_NAME not in {t.name for t in threading.enumerate()}
    assert capsys.readouterr().out == ""
    # LiveCharts wrote nothing: the same files, rows and events as without it.
    files = {p.relative_to(tmp_path / "live") for p in (tmp_path / "live").rglob("*")}
    assert files == {p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*")}
    assert list(with_live.history.columns) == list(without.history.columns)
    assert list(with_live.history["epoch"]) == [0, 1, 2]
    assert len(with_live.batches) == len(without.batches)
    assert list(with_live.events["type"]) == list(without.events["type"])
    listed = [c["class"].rsplit(".", 1)[-1] for c in with_live.manifest["callbacks"]]
    assert "LiveCharts" in listed


def test_a_long_run_is_redrawn_from_what_was_appended_in_bounded_work(tmp_path):
    run = RunDirectory(tmp_path / "long", create=True)
    dtype = run.open_batch_log()
    view = LiveView(run.path, time.monotonic(), 200)
    steps_per_epoch = 1000
    for epoch in range(200):
        records = np.zeros(steps_per_epoch, dtype)
        records["step"] = np.arange(steps_per_epoch) + epoch * steps_per_epoch
        records["epoch"], records["size"] = epoch, 32
        records["loss"] = 1.0 / (1.0 + records["step"] / 1e4)
        if epoch == 150:
            records["loss"][123] = 9.0  # a spike
        run.append_batches(records)
        run.append_history({"epoch": epoch, "loss": 1.0 / (1 + epoch), "val_loss": 1.1 / (1 + epoch)})
        if epoch in (9, 199):
            assert view.update()
            page = view.bundle()["text/html"]
            assert not view.update(), "nothing new: nothing to redraw"
            if epoch == 9:
                first_page = page

    batch_chart = page[page.index("per-batch loss"):]
    batch_chart = batch_chart[:batch_chart.index("</svg>")]
    drawn_points = sum(line.count(",") for line in re.findall(r'<polyline points="([^"]*)"', batch_chart))
    assert drawn_points <= 2.5 * MAX_LOSS_POINTS  # of 200,000 steps
    assert ">9<" in batch_chart, "the spike sets the top of the axis"
    assert len(page) < 3 * len(first_page)
    assert "epoch 200 of 200" in view.status() and "step 199999 loss" in view.status()

    # A resumed run cuts its logs back: the view starts over with them.
    run.truncate_history(100)
    run.truncate_batches(100 * steps_per_epoch)
    assert view.update()
    assert "epoch 100 of 200" in view.status()
    assert ">9<" not in view.bundle()["text/html"]


def test_every_must_be_positive_seconds():
    for bad in (0, -1.0, "2", True, None):
        with pytest.raises(ValueError, match="LiveCharts: every must be positive seconds"):
            kcallbacks.LiveCharts(every=bad)
