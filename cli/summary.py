"""`kreport summary`: a run at a glance, in the terminal or as JSON."""

import json
import math

import click

from kreport.common import echo_warnings, read_run


def _number(value):
    # Strict JSON has no NaN or infinity: scripts get null.
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _iso(moment):
    return moment.isoformat() if moment else None


def summary_dict(summary):
    """The summary as JSON-ready data (what `--json` prints)."""
    return {
        "name": summary.name,
        "path": summary.path,
        "status": summary.status,
        "status_label": summary.status_label,
        "started": _iso(summary.started),
        "ended": _iso(summary.ended),
        "last_written": _iso(summary.last_written),
        "duration_s": summary.duration,
        "epochs": summary.epochs_done,
        "epochs_planned": summary.epochs_planned,
        "last_epoch": summary.last_epoch,
        "resumes": summary.resumes,
        "preemptions": [
            {"time": _iso(p.time), "signal": p.signal, "epoch": p.epoch, "batch": p.batch,
             "step": p.step}
            for p in summary.preemptions
        ],
        "monitored": {
            q.name: {
                "mode": q.mode,
                "best": _number(q.best_value),
                "best_epoch": q.best_epoch,
                "final": _number(q.final),
            }
            for q in summary.quantities
        },
        "metrics": {
            m.name: {
                "mode": m.mode,
                "best": _number(m.best_value),
                "best_epoch": m.best_epoch,
                "final": _number(m.final),
            }
            for m in summary.metric_stats
        },
        "best_checkpoint": summary.best_checkpoint.path if summary.best_checkpoint else None,
        "backend": summary.backend,
        "versions": summary.versions,
        "warnings": summary.warnings,
    }


def summary_text(summary):
    from kreport.analysis import format_duration, format_time, format_value

    planned = f" of {summary.epochs_planned}" if summary.epochs_planned else ""
    facts = [
        ("run", summary.name),
        ("directory", summary.path),
        ("status", summary.status_label),
        ("epochs", f"{summary.epochs_done}{planned}"),
        ("duration", format_duration(summary.duration)),
    ]
    for index, p in enumerate(summary.preemptions):
        when = format_time(p.time) if p.time else "time unknown"
        facts.append(("pre-empted" if index == 0 else "", f"{when}: {p.text}"))
    if summary.backend:
        facts.append(("backend", summary.backend))
    for index, q in enumerate(summary.quantities):
        best = (
            f"{q.name} {format_value(q.best_value)} at epoch {q.best_epoch} ({q.mode})"
            if q.best_epoch is not None
            else f"{q.name}: no finite value"
        )
        facts.append(("best" if index == 0 else "", best))
    if summary.best_checkpoint:
        facts.append(("checkpoint", summary.best_checkpoint.path))
    width = max(len(label) for label, _ in facts)
    lines = [f"{label:<{width}}  {value}" for label, value in facts]
    if summary.metric_stats:
        rows = [("metric", "final", "best", "at epoch")] + [
            (m.name, format_value(m.final), format_value(m.best_value), format_value(m.best_epoch))
            for m in summary.metric_stats
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines.append("")
        for row in rows:
            lines.append(
                f"{row[0]:<{widths[0]}}  "
                + "  ".join(f"{cell:>{widths[i]}}" for i, cell in enumerate(row[1:], start=1))
            )
    return "\n".join(lines)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def summary(run_dir, as_json):
    """Print a run's status, best epochs and final metrics.

    The table shows the status, the epochs done, the best value and epoch of
    each monitored quantity (what the callbacks monitor, and val_loss), the
    best checkpoint, and each metric's final and best value. Warnings about
    the run go to stderr.

    With --json, one JSON object goes to stdout instead: NaN and infinite
    values are null there, times are ISO 8601, and `warnings` lists the
    warnings.
    """
    from kreport.analysis import summarize

    result = summarize(read_run(run_dir))
    if as_json:
        click.echo(json.dumps(summary_dict(result), indent=2))
    else:
        click.echo(summary_text(result))
    echo_warnings(result.warnings)
