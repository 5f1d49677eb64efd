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


def report_figures(run, summary, batch_loss=None):
    """The report's charts: (key, section, figure) in page order. `key` names
    the chart for good (`kreport serve` updates charts by it); `section` is
    the page section it belongs in (metrics, batches, learning-rate).

    Args:
        batch_loss: the per-batch loss as drawn (`charts.BatchLossPoints`);
            None: downsampled from `run.batches`.
    """
    from kreport import analysis, charts

    figures = [
        (f"metric:{title}", "metrics", charts.metric_figure(run, title, train, validation, summary.markers))
        for title, train, validation in analysis.metric_groups(summary.metrics)
    ]
    if batch_loss is None and len(run.batches) and "loss" in run.batches:
        batch_loss = charts.BatchLossPoints.of(run.batches)
    if batch_loss is not None and batch_loss.total_steps:
        figures.append(("batch-loss", "batches", charts.batch_loss_figure(batch_loss)))
    history = run.history
    if analysis.is_numeric(history, "learning_rate") and history["learning_rate"].notna().any():
        figures.append(("learning-rate", "learning-rate", charts.learning_rate_figure(run, summary.markers)))
    return figures


def report_context(run, summary):
    """What the report's template shows besides its charts (`kreport serve`'s
    page shows the same)."""
    from kreport import analysis

    history = run.history
    events, events_left_out = _event_rows(run)
    manifest = run.manifest
    epoch_seconds = None
    if analysis.is_numeric(history, "epoch_time"):
        epoch_seconds = float(history["epoch_time"].sum())
    return dict(
        s=summary,
        events=events,
        events_left_out=events_left_out,
        epoch_seconds=epoch_seconds,
        distribution=analysis.as_dict(manifest.get("distribution")),
        model=analysis.as_dict(manifest.get("model")),
        optimizer=analysis.as_dict(manifest.get("optimizer")),
        fit_params=analysis.as_dict(manifest.get("fit_params")),
        callbacks=[analysis.as_dict(c) for c in analysis.as_list(manifest.get("callbacks"))],
    )


def report_html(run, summary=None):
    """The HTML report of a loaded `Run` (and its `analysis.summarize`), as a string."""
    from kreport import analysis, render

    summary = summary or analysis.summarize(run)
    charts = report_figures(run, summary)
    ids = {section: [] for section in ("metrics", "batches", "learning-rate")}
    for index, (_, section, _) in enumerate(charts):
        ids[section].append(f"chart-{index}")
    return render.render_page(
        "report.html.j2",
        [figure for _, _, figure in charts],
        metric_charts=ids["metrics"],
        batch_chart=(ids["batches"] or [None])[0],
        lr_chart=(ids["learning-rate"] or [None])[0],
        **report_context(run, summary),
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
