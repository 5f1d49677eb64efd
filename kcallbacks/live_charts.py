"""LiveCharts: a fit's charts in a Jupyter notebook's cell output, redrawn while it trains."""

import contextvars
import datetime
import html
import math
import os
import sys
import threading
import time
import warnings

import numpy as np

from kcallbacks.run_callback import RunCallback
from kcallbacks.run_format import HISTORY_NON_METRIC_COLUMNS
from kcallbacks.run_reader import RunFollower, load_run
from kcallbacks.writer_role import is_chief

TRAIN_COLOR = "#1f77b4"
VALIDATION_COLOR = "#ff7f0e"
CHART_WIDTH, CHART_HEIGHT = 340, 200
# Plot area inside a chart: room for the title above and the tick labels.
LEFT, RIGHT, TOP, BOTTOM = 58, 10, 26, 22
# Height of the iframe that shows the final report (it scrolls inside).
REPORT_HEIGHT = 800
# About how many points of the per-batch loss are drawn, however long the run.
MAX_LOSS_POINTS = 1000
EPOCH_MEAN_COLOR = "#d62728"
# Read warnings shown under the status line: the latest.
MAX_NOTES = 3
# How long train end waits for a redraw in progress.
DRAW_JOIN_SECONDS = 30.0
THREAD_NAME = "kcallbacks-live-charts"


class LiveCharts(RunCallback):
    """Shows the run's charts in the notebook cell that runs the fit.

    In a Jupyter kernel, the cell's output shows one chart per metric
    (train and validation), the per-batch loss over global steps, the
    learning rate, and a status line (epoch, last loss, best value of the
    monitored quantity, elapsed time). A background thread reads what the
    run directory gained, at most every `every` seconds, and redraws them
    as inline SVG (no JavaScript: any frontend, and a saved notebook, shows
    them). The training thread does no reading and no drawing. When the
    fit ends (or is pre-empted), the charts are replaced with the run's
    report, the page `kreport build` writes, in an iframe. A fit that
    raises leaves the last charts, with a note, once its cell has ended.

    Outside a Jupyter kernel (a script, a terminal IPython) it does
    nothing. In a multi-process job only the process that writes the run
    shows charts. It reads the run directory of a kcallbacks callback that
    writes one (`HistoryLogger`, `BatchLossTracker`); put it after them, so
    that the report at the end has their last word.

    Args:
        run_dir: the run directory to show; None: that of another
            kcallbacks callback in the fit (without one, it warns and shows
            nothing).
        every: the least number of seconds between two redraws.

    Example:

    ```python
    import numpy as np
    import keras
    import kcallbacks

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=3, callbacks=[kcallbacks.HistoryLogger("runs/demo"),
                                         kcallbacks.LiveCharts(every=1.0)])
    ```
    """

    def __init__(self, run_dir=None, every=2.0):
        super().__init__(run_dir)
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
            raise ValueError(f"LiveCharts: every must be positive seconds, got {every!r}")
        self.every = float(every)
        self._display = None
        self._warned_no_run = False

    def begin_fit(self, logs=None):
        if self._display is not None:  # left by a fit of ours that raised
            self._display.stop()
            self._display = None
        shell = jupyter_kernel_shell()
        if shell is None or not is_chief():
            return
        if self.run is None:
            if not self._warned_no_run:
                self._warned_no_run = True
                warnings.warn(
                    "LiveCharts: no run directory to show: give it run_dir=, or put a "
                    "HistoryLogger or BatchLossTracker in the fit",
                    stacklevel=3,
                )
            return
        view = LiveView(self.run.path, time.monotonic(), (self.params or {}).get("epochs"))
        self._display = LiveDisplay(view, self.every, shell)

    def end_fit(self, logs=None):
        self._end_with_report()

    def end_preempted(self, preemption):
        self._end_with_report()

    def _end_with_report(self):
        if self._display is not None:
            self._display.stop()
            self._display.show_report()
            self._display = None

    def _what_needs_siblings(self):
        return None  # begin_fit says so when it finds no run directory


class LiveDisplay:
    """One fit's display in the cell's output, and the thread that redraws it.

    Args:
        view: the `LiveView` of the fit's run directory.
        every: the least number of seconds between two redraws.
        shell: the kernel's IPython shell.
    """

    def __init__(self, view, every, shell):
        from IPython.display import display

        self.view = view
        self.every = every
        self.handle = display(view.bundle(), raw=True, display_id=True)
        self._stop = threading.Event()
        self._shell = shell
        self._fit_thread = threading.current_thread()
        self._fit_cell = shell.execution_count
        # The copied context carries the kernel's parent header of the
        # running cell, so the thread's updates are that cell's output.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._redraw_until_stopped,),
            name=THREAD_NAME, daemon=True,
        )
        self._thread.start()

    def _fit_abandoned(self):
        """Whether the fit is over without its end (Keras calls no hook when
        a fit raises): its thread ended, or, on the kernel's main thread,
        the cell that ran it did."""
        if not self._fit_thread.is_alive():
            return True
        return (self._fit_thread is threading.main_thread()
                and self._shell.execution_count != self._fit_cell)

    def _redraw_until_stopped(self):
        try:
            while not self._stop.wait(self.every):
                if self._fit_abandoned():
                    self.view.update()
                    self.handle.update(
                        self.view.bundle(note="the fit stopped before its end"), raw=True)
                    return
                if self.view.update():
                    self.handle.update(self.view.bundle(), raw=True)
        except Exception as error:  # a broken display must not break the training
            self.handle.update(self.view.bundle(note=f"live charts stopped: {error!r}"), raw=True)

    def stop(self):
        """Stops the redraws (waiting for one in progress)."""
        self._stop.set()
        self._thread.join(DRAW_JOIN_SECONDS)

    def show_report(self):
        """Replaces the charts with the run's report; if it cannot be built,
        keeps them, with a note that says why."""
        try:
            if not self._thread.is_alive():  # (a redraw stuck past stop()'s wait owns the view)
                self.view.update()  # the last epochs: for the status, and if no report
            # Imported here (as kreport.analysis and kreport.live by LiveView):
            # importing kcallbacks never loads the report code (plotly,
            # jinja2); only a fit in a notebook does.
            from kreport.build import report_html

            shown = report_bundle(report_html(load_run(self.view.path)), self.view.status())
        except Exception as error:  # the fit itself went well: show what we have
            shown = self.view.bundle(note=f"no report: {error!r}")
        self.handle.update(shown, raw=True)


def jupyter_kernel_shell():
    """The IPython shell of the Jupyter kernel running this code, or None
    (a script, a terminal IPython). Imports nothing: a kernel has loaded
    ipykernel already."""
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if zmqshell is None:
        return None
    shell = sys.modules["IPython"].get_ipython()
    return shell if isinstance(shell, zmqshell.ZMQInteractiveShell) else None


def report_bundle(document, status):
    """The display of the final report: `document` (a whole HTML page) in an
    iframe, so its scripts and styles stay out of the notebook's page."""
    frame = (
        f'<iframe srcdoc="{html.escape(document, quote=True)}" '
        f'style="width: 100%; height: {REPORT_HEIGHT}px; border: 1px solid #ddd"></iframe>'
    )
    return {"text/html": frame, "text/plain": status}


class LiveView:
    """What the display shows, kept up to date from the run directory.

    Holds the history rows, the per-batch loss downsampled as it arrives,
    the manifest and the last read warnings; `update` adds what the run directory
    gained since the last call, so each redraw costs what was appended and
    a bounded drawing, not a re-read of the run.

    Args:
        path: the run directory.
        started: when the fit began (`time.monotonic()`).
        epochs: the epochs the fit runs to, or None.
    """

    def __init__(self, path, started, epochs):
        self.path = path
        self.started = started
        self.epochs = epochs
        self._follower = RunFollower(path)
        self._clear()

    def _clear(self):
        # kreport's incremental downsampling of the per-batch loss, the one
        # `kreport serve` draws with; kreport.live loads nothing heavy.
        from kreport.live import BatchLossSeries

        self.manifest = {}
        self.rows = {}  # epoch -> history row
        self.metrics = {}  # the numeric history columns, in the order they appeared
        self.losses = BatchLossSeries(MAX_LOSS_POINTS)
        self.last_step = None  # (step, its loss)
        self.warnings = []  # the last few

    def update(self):
        """Reads what the run directory gained; returns whether it gained anything."""
        changes = self._follower.poll()
        if changes.reset:
            self._clear()
        if changes.manifest is not None:
            self.manifest = changes.manifest
        for row in changes.history_rows:
            self.rows[row["epoch"]] = row
            for name, value in row.items():
                if name not in HISTORY_NON_METRIC_COLUMNS and _is_number(value):
                    self.metrics.setdefault(name)
        batches = changes.batches
        if batches is not None and len(batches):
            self.losses.add(batches)
            self.last_step = (int(batches["step"][-1]), float(batches["loss"][-1]))
        self.warnings = (self.warnings + changes.warnings)[-MAX_NOTES:]
        return changes.changed

    def series(self, name):
        """(epochs, values) of the epochs whose row has `name`."""
        epochs = [e for e in sorted(self.rows) if _is_number(self.rows[e].get(name))]
        return epochs, [float(self.rows[e][name]) for e in epochs]

    def status(self):
        """One line: where the fit is, its last loss, its best monitored value."""
        # The report's rules for what is monitored and in which direction,
        # so the two agree; kreport.analysis loads nothing heavy.
        from kreport.analysis import mode_for, monitored_quantities

        parts = [os.path.basename(self.path)]
        done = max(self.rows) + 1 if self.rows else 0
        parts.append(f"epoch {done} of {self.epochs}" if self.epochs else f"epoch {done}")
        if self.last_step is not None:
            step, loss = self.last_step
            parts.append(f"step {step} loss {loss:.4g}")
        for name, declared, _ in monitored_quantities(self.manifest, list(self.metrics))[:1]:
            epochs_logged, values = self.series(name)
            finite = [(v, e) for e, v in zip(epochs_logged, values) if math.isfinite(v)]
            if finite:
                pick = min if mode_for(name, declared) == "min" else max
                value, epoch = pick(finite)
                parts.append(f"best {name} {value:.4g} (epoch {epoch})")
        elapsed = datetime.timedelta(seconds=round(time.monotonic() - self.started))
        parts.append(f"{elapsed} elapsed")
        return " · ".join(parts)

    def charts(self):
        """The SVG charts: one per metric (train and validation; the loss
        first), the per-batch loss, the learning rate."""
        from kreport.analysis import metric_groups

        svgs = []
        groups = metric_groups(list(self.metrics))
        for title, train, validation in sorted(groups, key=lambda group: group[0] != "loss"):
            lines = []
            if train:
                lines.append(("train", TRAIN_COLOR, *self.series(train)))
            if validation:
                lines.append(("validation", VALIDATION_COLOR, *self.series(validation)))
            svgs.append(svg_chart(title, "epoch", lines))
        if self.losses.total_steps:
            drawn = self.losses.points()
            svgs.append(svg_chart("per-batch loss", "step", [
                ("batch", TRAIN_COLOR, np.concatenate([drawn.steps, drawn.tail_steps]),
                 np.concatenate([drawn.losses, drawn.tail_losses])),
                ("epoch mean", EPOCH_MEAN_COLOR, drawn.epoch_centers, drawn.epoch_means),
            ]))
        epochs, rates = self.series("learning_rate")
        if epochs:
            svgs.append(svg_chart("learning rate", "epoch", [("", TRAIN_COLOR, epochs, rates)]))
        return svgs

    def bundle(self, note=None):
        """The display's MIME bundle: the charts as HTML, the status as text."""
        status = self.status()
        notes = self.warnings + ([note] if note else [])
        charts = self.charts() or ["<p>waiting for the first epoch…</p>"]
        page = (
            '<div style="font-family: sans-serif; font-size: 13px">'
            f"<div><b>{html.escape(status)}</b></div>"
            + "".join(f'<div style="color: #a33">{html.escape(line)}</div>' for line in notes)
            + '<div style="display: flex; flex-wrap: wrap; gap: 8px">'
            + "".join(charts)
            + "</div></div>"
        )
        return {"text/html": page, "text/plain": "\n".join([status] + notes)}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def svg_chart(title, x_label, lines):
    """A small SVG line chart.

    Args:
        title: the chart's title.
        x_label: what the x axis counts.
        lines: (label, color, xs, ys) each; a non-finite y breaks its line.
    """
    xs = np.concatenate([np.asarray(x, dtype="float64") for _, _, x, _ in lines])
    ys = np.concatenate([np.asarray(y, dtype="float64") for _, _, _, y in lines])
    finite = np.isfinite(ys)
    x0, x1 = _span(xs[finite]) if finite.any() else (0.0, 1.0)
    y0, y1 = _span(ys[finite]) if finite.any() else (0.0, 1.0)
    plot_width, plot_height = CHART_WIDTH - LEFT - RIGHT, CHART_HEIGHT - TOP - BOTTOM

    def position(x, y):
        return (LEFT + (x - x0) / (x1 - x0) * plot_width,
                TOP + (y1 - y) / (y1 - y0) * plot_height)

    legend = "".join(
        f'<tspan fill="{color}" dx="8">■ {html.escape(label)}</tspan>'
        for label, color, _, _ in lines if label
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'font-size="11" font-family="sans-serif">',
        f'<text x="{LEFT}" y="14"><tspan font-weight="bold">{html.escape(title)}</tspan>{legend}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" '
        'fill="none" stroke="#ccc"/>',
    ]
    if finite.any():
        for value in (y0, (y0 + y1) / 2, y1):
            _, y = position(x0, value)
            parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.4g}</text>')
        # The first and last x drawn (one, centred, when they are the same).
        first, last = xs[finite].min(), xs[finite].max()
        for value, anchor in [(first, "start"), (last, "end")] if first < last else [(first, "middle")]:
            x, _ = position(value, y0)
            parts.append(f'<text x="{x:.1f}" y="{CHART_HEIGHT - 6}" text-anchor="{anchor}">'
                         f"{x_label} {value:.6g}</text>")
    for _, color, line_xs, line_ys in lines:
        for segment in _finite_runs(np.asarray(line_xs, "float64"), np.asarray(line_ys, "float64")):
            points = [position(x, y) for x, y in segment]
            if len(points) == 1:
                parts.append(f'<circle cx="{points[0][0]:.1f}" cy="{points[0][1]:.1f}" r="2" '
                             f'fill="{color}"/>')
            else:
                coordinates = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
                parts.append(f'<polyline points="{coordinates}" fill="none" stroke="{color}" '
                             'stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def _span(values):
    """(low, high) of the values, widened when they are all equal."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        pad = abs(low) * 0.05 or 0.5
        return low - pad, high + pad
    return low, high


def _finite_runs(xs, ys):
    """The stretches of consecutive finite points, as lists of (x, y)."""
    runs, current = [], []
    for x, y in zip(xs.tolist(), ys.tolist()):
        if math.isfinite(y):
            current.append((x, y))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs
