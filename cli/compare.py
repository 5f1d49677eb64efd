"""`kreport compare`: several runs' curves overlaid in one HTML report."""

import json

import click

from kreport.common import echo_warnings, fail, read_run, write_output


def _flatten(prefix, value, into):
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, into)
    else:
        into[prefix] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=repr)


def configuration(manifest):
    """A run's configuration as flat `section.key` -> text: what to compare."""
    from kreport.analysis import as_dict, as_list

    flat = {}
    model = as_dict(manifest.get("model"))
    _flatten("model", {k: model.get(k) for k in ("class", "total_params", "trainable_params") if k in model}, flat)
    _flatten("optimizer", as_dict(manifest.get("optimizer")), flat)
    _flatten("fit", as_dict(manifest.get("fit_params")), flat)
    seen = {}
    for callback in as_list(manifest.get("callbacks")):
        callback = as_dict(callback)
        name = str(callback.get("class", "?")).rsplit(".", 1)[-1]
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        _flatten(f"callbacks.{label}", as_dict(callback.get("config")), flat)
    _flatten("versions", as_dict(manifest.get("environment")), flat)
    return flat


def config_differences(manifests):
    """(key, [value per run, None where absent]) for each key that differs."""
    flats = [configuration(m) for m in manifests]
    keys = sorted(set().union(*flats))
    rows = []
    for key in keys:
        values = [flat.get(key) for flat in flats]
        if len(set(values)) > 1:
            rows.append((key, values))
    return rows


def run_labels(summaries):
    """Run names; where two runs share one (a copied run keeps its name), the
    directory names, and where those clash too, the paths."""
    import os

    names = [s.name for s in summaries]
    folders = [os.path.basename(s.path) for s in summaries]
    return [
        name if names.count(name) == 1 else folder if folders.count(folder) == 1 else s.path
        for name, folder, s in zip(names, folders, summaries)
    ]


def compare_html(runs):
    from kreport import analysis, charts, render

    summaries = [analysis.summarize(run) for run in runs]
    labels = run_labels(summaries)
    metrics = []
    for summary in summaries:
        metrics += [m for m in summary.metrics if m not in metrics]
    groups = analysis.metric_groups(metrics)
    figures = [
        charts.comparison_figure(title, list(zip(labels, runs)), train, validation)
        for title, train, validation in groups
    ]
    quantity_names = []
    for summary in summaries:
        quantity_names += [q.name for q in summary.quantities if q.name not in quantity_names]
    best = [
        {q.name: q for q in summary.quantities} for summary in summaries
    ]
    warnings = [f"{label}: {w}" for label, s in zip(labels, summaries) for w in s.warnings]
    html = render.render_page(
        "compare.html.j2",
        figures,
        runs=list(zip(labels, summaries, best)),
        quantity_names=quantity_names,
        differences=config_differences([run.manifest for run in runs]),
        labels=labels,
        warnings=warnings,
    )
    return html, warnings


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@click.option(
    "-o", "--output", default="compare.html", show_default=True,
    type=click.Path(dir_okay=False, path_type=str), help="Where to write the report.",
)
def compare(run_dirs, output):
    """Compare two or more runs in one HTML report.

    Each metric gets one chart with every run's curves (a color per run,
    training solid, validation dashed). A table gives each run's status,
    epochs and best value of each monitored quantity, and another the
    configuration that differs between the runs: optimizer, fit parameters,
    callbacks, model size and versions. Like `kreport build`, the file is
    self-contained and works offline. The run directories are not changed.
    """
    if len(run_dirs) < 2:
        fail("compare needs at least two run directories")
    html, warnings = compare_html([read_run(path) for path in run_dirs])
    write_output(output, html)
    echo_warnings(warnings)
    click.echo(f"Wrote {output}")
