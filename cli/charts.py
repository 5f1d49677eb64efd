"""Plotly figures for kreport's HTML pages, and the downsampling behind them.

Figures are plotly figure specs as plain data (dicts of traces and layout,
the JSON plotly.js draws), rendered in the page by the plotly.js bundle
embedded in it. Plain data rather than plotly's graph objects: those validate
and copy every attribute, which made building a figure 10-25 ms, and
`kreport serve` rebuilds figures on every update. Every string that comes from a run goes
through `text()` first: plotly draws a subset of HTML in names and hover
labels, so a metric called `<b>` must reach it as `&lt;b&gt;` to show as
typed.
"""

import dataclasses
import functools
import html

import numpy as np

from kcallbacks.run_format import Event
from kreport.analysis import CHECKPOINT_MARKER, logged

# Points drawn for the per-batch loss, however long the log.
MAX_BATCH_POINTS = 4000

TRAIN_COLOR = "#1f77b4"
VALIDATION_COLOR = "#ff7f0e"
# Colors of runs in a comparison (plotly's default cycle).
RUN_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

# How each kind of event marker looks, and its legend name.
MARKER_STYLES = {
    CHECKPOINT_MARKER: ("checkpoint saved", dict(symbol="diamond", size=9, color="#2ca02c")),
    Event.LR_REDUCED: ("LR reduced", dict(symbol="triangle-down", size=10, color="#9467bd")),
    Event.EARLY_STOP: ("early stop", dict(symbol="x", size=12, color="#d62728")),
    Event.RESUMED: ("resumed", dict(symbol="star", size=12, color="#444444")),
    Event.PREEMPTED: ("pre-empted", dict(symbol="x", size=11, color="#b2182b")),
}


def text(value):
    """A run's string, escaped for plotly's HTML-like labels."""
    return html.escape(str(value), quote=False)


# --- downsampling -------------------------------------------------------------


def minmax_indices(values, max_points=MAX_BATCH_POINTS):
    """Indices of at most about `max_points` points that keep the shape.

    The series is cut into equal buckets of consecutive points; each keeps
    its lowest and highest finite point (so spikes and dips survive, unlike
    plain striding) and its first NaN or infinite point (so a gap stays a
    gap). The first and last points are always kept.
    """
    values = np.asarray(values, dtype="float64")
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    size = -(-n // max(max_points // 2, 1))
    buckets = -(-n // size)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = values
    grid = padded.reshape(buckets, size)
    real = (np.arange(buckets * size) < n).reshape(buckets, size)
    finite = np.isfinite(grid)
    bad = real & ~finite
    lowest = np.argmin(np.where(finite, grid, np.inf), axis=1)
    highest = np.argmax(np.where(finite, grid, -np.inf), axis=1)
    first_bad = np.argmax(bad, axis=1)
    offsets = np.arange(buckets) * size
    keep = np.concatenate(
        [
            lowest + offsets,
            highest + offsets,
            (first_bad + offsets)[bad.any(axis=1)],
            [0, n - 1],
        ]
    )
    return np.unique(keep[keep < n])


def epoch_means(steps, epochs, values, sizes):
    """(center step, mean) of each epoch's stretch of batches, weighted by
    batch size; non-finite values are left out of the mean."""
    steps = np.asarray(steps)
    epochs = np.asarray(epochs)
    values = np.asarray(values, dtype="float64")
    if not len(steps):
        return np.array([]), np.array([])
    starts = np.flatnonzero(np.r_[True, epochs[1:] != epochs[:-1]])
    ends = np.r_[starts[1:], len(steps)] - 1
    weights = np.asarray(sizes, dtype="float64")
    weights = np.where(weights > 0, weights, 1.0)
    finite = np.isfinite(values)
    weights = np.where(finite, weights, 0.0)
    totals = np.add.reduceat(np.where(finite, values, 0.0) * weights, starts)
    counts = np.add.reduceat(weights, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, totals / counts, np.nan)
    centers = (steps[starts] + steps[ends]) / 2.0
    return centers, means


# --- figures ------------------------------------------------------------------


def _finite_or_nan(values):
    values = np.asarray(values, dtype="float64")
    return np.where(np.isfinite(values), values, np.nan)


def _epoch_axis(epochs):
    """Whole-number ticks on a short epoch axis (plotly would put 0.5s)."""
    epochs = np.asarray(epochs)
    span = int(epochs.max() - epochs.min()) if len(epochs) else 0
    return dict(title=dict(text="epoch"), dtick=1) if span <= 15 else dict(title=dict(text="epoch"))


@functools.cache
def _template():
    import plotly.io

    return plotly.io.templates["plotly_white"].to_plotly_json()


def _figure(traces, layout):
    return {"data": traces, "layout": layout}


def _layout(title, x_title, y_title=None, log_y=False):
    return dict(
        template=_template(),
        title=dict(text=title, x=0, xanchor="left", font=dict(size=15)),
        height=340,
        margin=dict(l=60, r=20, t=60, b=45),
        hovermode="x unified",
        showlegend=True,  # even with one curve: its name says which it is
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        xaxis=dict(title=dict(text=x_title)),
        yaxis=dict(title=dict(text=y_title or ""), type="log" if log_y else "linear"),
    )


def _line(x, y, name, color, dash=None):
    return dict(
        type="scatter",
        x=np.asarray(x),
        y=_finite_or_nan(y),
        name=name,
        mode="lines+markers" if len(x) <= 60 else "lines",
        line=dict(color=color, width=2, **({"dash": dash} if dash else {})),
        marker=dict(size=5),
        hovertemplate="%{y:.5g}",
    )


def _marker_traces(markers, curves):
    """One trace per kind of event, its points sitting on the curves (the
    later of `curves`, (epochs, values) pairs, where both have the epoch) so
    they read as "this happened here"."""
    at_epoch = {}
    for epochs, values in curves:
        at_epoch.update(zip(np.asarray(epochs).tolist(), _finite_or_nan(values).tolist()))
    traces = []
    for kind, (name, style) in MARKER_STYLES.items():
        chosen = [m for m in markers if m.kind == kind and m.epoch in at_epoch]
        if not chosen:
            continue
        traces.append(
            dict(
                type="scatter",
                x=[m.epoch for m in chosen],
                y=[at_epoch[m.epoch] for m in chosen],
                name=name,
                mode="markers",
                marker=dict(style, line=dict(width=1, color="white")),
                hovertext=[text(m.text) for m in chosen],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    return traces


def metric_figure(run, title, train, validation, markers):
    """A metric's train and validation curves over epochs, with event markers
    (on the validation curve where it has the epoch: checkpoints and early
    stopping usually watch it)."""
    traces, curves = [], []
    for column, color in ((train, TRAIN_COLOR), (validation, VALIDATION_COLOR)):
        if column is not None:
            epochs, values = logged(run, column)
            traces.append(_line(epochs, values, text(column), color))
            curves.append((epochs, values))
    traces += _marker_traces(markers, curves)
    layout = _layout(text(title), "epoch", text(title))
    layout["xaxis"].update(_epoch_axis(run.history["epoch"]))
    return _figure(traces, layout)


@dataclasses.dataclass
class BatchLossPoints:
    """The per-batch loss as drawn: the points kept of it and its epoch means.

    Attributes:
        steps, losses: the points drawn (global step, loss).
        epoch_centers, epoch_means: each epoch's middle step and mean loss.
        total_steps: how many steps the log holds.
        tail_steps, tail_losses: for a run being written, the points after
            `steps` that will still change (drawn as a trace of their own, so
            that `kreport serve` appends to the first and replaces only
            this one); None in a report.
    """

    steps: np.ndarray
    losses: np.ndarray
    epoch_centers: np.ndarray
    epoch_means: np.ndarray
    total_steps: int
    tail_steps: np.ndarray | None = None
    tail_losses: np.ndarray | None = None

    @classmethod
    def of(cls, batches):
        """Downsampled (`minmax_indices`) from a run's whole per-batch log."""
        steps = batches["step"].to_numpy()
        loss = batches["loss"].to_numpy(dtype="float64")
        keep = minmax_indices(loss)
        centers, means = epoch_means(
            steps, batches["epoch"].to_numpy(), loss, batches["size"].to_numpy()
        )
        return cls(steps[keep], loss[keep], centers, means, len(steps))


def batch_loss_figure(points):
    """The per-batch loss over global steps (`BatchLossPoints`) and its epoch means."""
    drawn = len(points.steps)
    if points.tail_steps is not None:
        drawn = len(np.union1d(points.steps, points.tail_steps))  # the tail repeats a point
    shown = (
        f"{points.total_steps:,} steps"
        if drawn == points.total_steps
        else f"{points.total_steps:,} steps; {drawn:,} points drawn, each bucket's lowest and highest kept"
    )
    traces = [
        dict(
            type="scatter", x=points.steps, y=_finite_or_nan(points.losses), name="batch loss",
            mode="lines", line=dict(color="rgba(31,119,180,0.45)", width=1),
            hovertemplate="%{y:.5g}",
        ),
        dict(
            type="scatter", x=points.epoch_centers, y=_finite_or_nan(points.epoch_means), name="epoch mean",
            mode="lines+markers", line=dict(color="#d62728", width=2), marker=dict(size=4),
            hovertemplate="%{y:.5g}",
        ),
    ]
    if points.tail_steps is not None:
        traces.append(
            dict(
                type="scatter", x=points.tail_steps, y=_finite_or_nan(points.tail_losses),
                name="batch loss (latest)", showlegend=False, mode="lines",
                line=dict(color="rgba(31,119,180,0.45)", width=1), hovertemplate="%{y:.5g}",
            )
        )
    layout = _layout(f"Per-batch loss ({shown})", "global step", "loss")
    layout["hovermode"] = "closest"
    return _figure(traces, layout)


def learning_rate_figure(run, markers):
    epochs, rates = logged(run, "learning_rate")
    positive = rates[np.isfinite(rates) & (rates > 0)]
    log_y = len(positive) > 0 and positive.max() / positive.min() > 10
    traces = [_line(epochs, rates, "learning rate", "#9467bd")]
    traces += _marker_traces([m for m in markers if m.kind == Event.LR_REDUCED], [(epochs, rates)])
    layout = _layout("Learning rate", "epoch", "learning rate", log_y)
    layout["xaxis"].update(_epoch_axis(epochs))
    if not log_y and len(positive):
        # From zero, so a constant rate reads as a level, not as noise.
        layout["yaxis"].update(range=[0, float(positive.max()) * 1.15])
    return _figure(traces, layout)


def comparison_figure(title, runs, train, validation):
    """One metric of several runs: each run a color, train solid, validation dashed.

    Args:
        runs: (label, `Run`) pairs.
    """
    traces = []
    for index, (label, run) in enumerate(runs):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        for column, dash in ((train, None), (validation, "dash")):
            if column is not None and column in run.history:
                epochs, values = logged(run, column)
                traces.append(_line(epochs, values, text(f"{label}: {column}"), color, dash))
    return _figure(traces, _layout(text(title), "epoch", text(title)))
