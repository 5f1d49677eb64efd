"""`kreport build`: one self-contained HTML report of a run."""

import os

import click

from kreport.common import echo_warnings, read_run, write_output

# Beyond this many events the table stops; the event log has them all.
MAX_EVENT_ROWS = 500


def _event_rows(run):
    from kreport.analysis import is_present

    rows = []
    for event in run.events.to_dict("records")[:MAX_EVENT_ROWS]:
        details = ", ".join(
            f"{key}={value}"
            for key, value in event.items()
            if key not in ("time", "type") and (isinstance(value, (list, dict)) or is_present(value))
        )
        rows.append({"time": event.get("time", ""), "type": event.get("type", ""), "details": details})
    return rows, max(len(run.events) - MAX_EVENT_ROWS, 0)


def report_html(run, summary=None):
    """The HTML report of a loaded `Run` (and its `analysis.summarize`), as a string."""
    from kreport import analysis, charts, render

    summary = summary or analysis.summarize(run)
    history = run.history
    figures = [
        charts.metric_figure(run, title, train, validation, summary.markers)
        for title, train, validation in analysis.metric_groups(summary.metrics)
    ]
    metric_charts = [f"chart-{i}" for i in range(len(figures))]
    batch_chart = lr_chart = None
    if len(run.batches) and "loss" in run.batches:
        batch_chart = f"chart-{len(figures)}"
        figures.append(charts.batch_loss_figure(run.batches))
    if analysis.is_numeric(history, "learning_rate") and history["learning_rate"].notna().any():
        lr_chart = f"chart-{len(figures)}"
        figures.append(charts.learning_rate_figure(run, summary.markers))
    events, events_left_out = _event_rows(run)
    manifest = run.manifest
    epoch_seconds = None
    if analysis.is_numeric(history, "epoch_time"):
        epoch_seconds = float(history["epoch_time"].sum())
    return render.render_page(
        "report.html.j2",
        figures,
        s=summary,
        metric_charts=metric_charts,
        batch_chart=batch_chart,
        lr_chart=lr_chart,
        events=events,
        events_left_out=events_left_out,
        epoch_seconds=epoch_seconds,
        distribution=analysis.as_dict(manifest.get("distribution")),
        model=analysis.as_dict(manifest.get("model")),
        optimizer=analysis.as_dict(manifest.get("optimizer")),
        fit_params=analysis.as_dict(manifest.get("fit_params")),
        callbacks=[analysis.as_dict(c) for c in analysis.as_list(manifest.get("callbacks"))],
    )


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=str),
    help="Where to write the report.  [default: RUN_DIR/report.html]",
)
@click.option("--open", "open_report", is_flag=True, help="Open the report in the default browser.")
def build(run_dir, output, open_report):
    """Build an HTML report of the run in RUN_DIR.

    The report is one self-contained HTML file that works offline: plotly.js
    is embedded, nothing is fetched. It shows the run's status, timing and
    versions; the best epoch of each monitored quantity and the final
    metrics; an interactive chart per metric (train and validation, with
    checkpoint saves, learning-rate reductions, early stop and resumes
    marked); the per-batch loss; the learning rate; the checkpoints; the
    model summary and the fit, optimizer and callback configuration; and
    warnings about anything odd found while reading (NaN epochs, torn lines).

    Nothing in RUN_DIR is changed except the report file itself.
    """
    from kreport.analysis import summarize

    run = read_run(run_dir)
    summary = summarize(run)
    output = output or os.path.join(run_dir, "report.html")
    write_output(output, report_html(run, summary))
    echo_warnings(summary.warnings)
    click.echo(f"Wrote {output}")
    if open_report:
        click.launch(os.path.abspath(output))
