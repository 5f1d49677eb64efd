"""The charts of a study page (`kreport compare`): hyperparameters against
the objective, and every run's learning curves, compact enough for a
thousand runs in one file.

Curves are not plotly traces here: each run's epoch values go into the page
once, as base64 float32 (plotly.js reads `{"dtype": "f4", "bdata": ...}`
arrays as they are), and the page makes the traces of the runs that are
switched on (the best `top` at first). Ten thousand hidden traces would
make plotly slow to draw the page; a thousand runs' numbers as JSON text
would double its size.
"""

import base64
import math

import numpy as np

from kreport.analysis import metric_groups
from kreport.charts import RUN_COLORS, _layout, text
from kreport.study import is_numeric_hparam

# A numeric axis spanning this factor or more is drawn in log scale.
LOG_SPAN = 20.0


def typed_array(values, dtype):
    """A numpy array as plotly.js's typed-array spec."""
    data = np.ascontiguousarray(values, dtype=dtype)
    return {"dtype": {"float32": "f4", "int32": "i4"}[data.dtype.name],
            "bdata": base64.b64encode(data.tobytes()).decode("ascii")}


def _log_scale(values):
    present = [v for v in values if v is not None and math.isfinite(v)]
    return bool(present) and min(present) > 0 and max(present) / min(present) >= LOG_SPAN


def parallel_coordinates(study):
    """One line per run that has the objective, across an axis per
    hyperparameter and the objective last; None when there is no
    hyperparameter to draw. Numbers keep their scale (log10 where they span
    decades), other values become a category axis."""
    runs = [r for r in study.runs if r.objective is not None]
    if not runs or not study.hparam_names:
        return None
    dimensions = []
    for name in study.hparam_names:
        values = [r.hparams.get(name) for r in runs]
        if is_numeric_hparam(values) and None not in values:
            dimensions.append(_numeric_dimension(name, [float(v) for v in values]))
        else:
            labels = [_label(v) for v in values]
            order = sorted(set(labels))
            dimensions.append(dict(
                label=text(name), values=[order.index(label) for label in labels],
                tickvals=list(range(len(order))), ticktext=[text(o) for o in order],
            ))
    objective = [r.objective for r in runs]
    dimensions.append(dict(label=text(study.objective), values=objective))
    trace = dict(
        type="parcoords",
        dimensions=dimensions,
        line=dict(color=objective, colorscale="Viridis", showscale=True,
                  # the best runs bright, whichever way is better
                  reversescale=study.mode == "min",
                  colorbar=dict(title=dict(text=text(study.objective)))),
    )
    layout = _layout(text(f"Hyperparameters and {study.objective}"), "")
    layout.update(height=420, margin=dict(l=80, r=80, t=90, b=40))
    layout.pop("hovermode", None)
    return {"data": [trace], "layout": layout}


def _numeric_dimension(name, values):
    if not _log_scale(values):
        return dict(label=text(name), values=values)
    logs = [math.log10(v) for v in values]
    decades = range(math.floor(min(logs)), math.ceil(max(logs)) + 1)
    return dict(
        label=text(f"{name} (log)"), values=logs,
        tickvals=list(decades), ticktext=[f"1e{d}" for d in decades],
    )


def _label(value):
    return "–" if value is None else str(value)


def objective_scatters(study):
    """The objective against each numeric hyperparameter, a point per run."""
    figures = []
    runs = [r for r in study.runs if r.objective is not None]
    for name in study.hparam_names:
        values = [r.hparams.get(name) for r in runs]
        if not is_numeric_hparam(values):
            continue
        points = [(v, r) for v, r in zip(values, runs) if v is not None]
        trace = dict(
            type="scatter", mode="markers",
            x=[v for v, _ in points], y=[r.objective for _, r in points],
            text=[text(r.label) for _, r in points],
            hovertemplate="%{text}<br>" + text(name) + " = %{x}<br>"
            + text(study.objective) + " = %{y:.5g}<extra></extra>",
            marker=dict(size=7, color=RUN_COLORS[0], opacity=0.75),
            name=text(study.objective),
        )
        layout = _layout(text(f"{study.objective} against {name}"), text(name),
                         text(study.objective))
        layout["showlegend"] = False
        layout["hovermode"] = "closest"
        if _log_scale([float(v) for v, _ in points]):
            layout["xaxis"]["type"] = "log"
        figures.append({"data": [trace], "layout": layout})
    return figures


def curve_figures(study):
    """(figures, their metric groups): one empty chart per metric (train
    solid, validation dashed), which the page fills with the runs switched
    on (see `curve_data`)."""
    groups = metric_groups(study.metrics)
    figures = []
    for title, _, _ in groups:
        layout = _layout(text(title), "epoch", text(title))
        layout["hovermode"] = "closest"
        figures.append({"data": [], "layout": layout})
    return figures, groups


def curve_data(study, groups):
    """Every run's curves, for the page to draw on demand: per run (in the
    table's order) its label, color, epochs and the values of each metric
    of `groups`, NaN where an epoch lacks it."""
    history = study.history
    if len(history):
        order = history["run"].to_numpy()
        starts = np.searchsorted(order, np.arange(order.max() + 2))
    columns = [c for _, train, val in groups for c in (train, val) if c is not None]
    arrays = {c: history[c].to_numpy(dtype="float32") for c in columns}
    epochs = history["epoch"].to_numpy(dtype="int32") if len(history) else None
    runs = []
    for rank, run in enumerate(study.runs):
        entry = {"label": text(run.label), "color": RUN_COLORS[rank % len(RUN_COLORS)]}
        if len(history) and run.index < len(starts) - 1:
            rows = slice(starts[run.index], starts[run.index + 1])
            if rows.stop > rows.start:
                entry["x"] = typed_array(epochs[rows], "int32")
                entry["y"] = {
                    c: typed_array(arrays[c][rows], "float32")
                    for c in columns if np.isfinite(arrays[c][rows]).any()
                }
        runs.append(entry)
    return {
        "groups": [[text(title), train, val] for title, train, val in groups],
        "runs": runs,
    }
