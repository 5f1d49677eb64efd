"""`kreport compare`: a study of runs (a sweep, a search) in one HTML page."""

import json

import click

from kreport.common import echo_warnings, fail, write_output


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


# Above this many runs the configuration table (a column per run) is left out:
# the hyperparameter columns say what differs.
MAX_CONFIG_COLUMNS = 12
# Warnings listed on the page; the rest are counted.
MAX_WARNINGS = 30


def study_page(study, top):
    """The study page's HTML (one self-contained file)."""
    from kreport import render, study_charts

    curves, groups = study_charts.curve_figures(study)
    parallel = study_charts.parallel_coordinates(study)
    scatters = study_charts.objective_scatters(study)
    figures = ([parallel] if parallel else []) + scatters + curves
    runs = study.runs
    differences = (
        config_differences([r.manifest for r in runs]) if len(runs) <= MAX_CONFIG_COLUMNS else None
    )
    return render.render_page(
        "compare.html.j2",
        figures,
        study=study,
        runs=runs,
        top=min(top, len(runs)),
        parallel=parallel is not None,
        scatter_count=len(scatters),
        curve_offset=len(figures) - len(curves),
        curve_data=render.script_json(study_charts.curve_data(study, groups)),
        differences=differences,
        max_config_columns=MAX_CONFIG_COLUMNS,
        warnings=study.warnings[:MAX_WARNINGS],
        warnings_left_out=max(len(study.warnings) - MAX_WARNINGS, 0),
        without_objective=sum(r.objective is None for r in runs),
    )


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@click.option("--objective", metavar="METRIC",
              help="The epoch metric that ranks the runs (its best epoch counts).  "
                   "[default: what the runs' callbacks monitor, else val_loss]")
@click.option("--max", "mode", flag_value="max", help="Higher objective is better.")
@click.option("--min", "mode", flag_value="min", help="Lower objective is better.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0),
              help="Runs whose learning curves are drawn at first.")
@click.option(
    "-o", "--output", default="compare.html", show_default=True,
    type=click.Path(dir_okay=False, path_type=str), help="Where to write the report.",
)
def compare(paths, objective, mode, top, output):
    """Compare runs as a study: which hyperparameters made the best run best.

    PATHS are run directories, or directories holding runs at any depth (a
    sweep's `runs/`, a keras-tuner search's directory): every run found
    under them is read, its per-batch log left aside.

    The page ranks the runs by the objective: each run's best value of it
    over its epochs. The direction comes from --max or --min, else from the
    mode of a callback monitoring it, else from its name as Keras infers it
    (accuracy up, loss down). The table has a column per hyperparameter
    (those the runs were given, and those recorded automatically that
    differ), the best value and epoch of each monitored quantity, and each
    run's state: finished, stopped early, running (its writer holds the
    run now), interrupted (killed, or its fit raised), pre-empted. Runs
    without the objective yet are listed last, not dropped.

    Below it: a parallel-coordinates chart of the hyperparameters against
    the objective, the objective against each numeric hyperparameter, and
    the learning curves of the best --top runs; a checkbox in the table
    draws any other run's. With a dozen runs or fewer, a table of every
    configuration setting that differs is added. Like `kreport build`, the
    file is self-contained and works offline; the runs are not changed.

    Examples:

        kreport compare runs/ --objective val_accuracy -o study.html

        kreport compare runs/lr-1e-3 runs/lr-1e-2
    """
    from kreport.study import StudyError, load_study

    try:
        study = load_study(paths, objective, mode)
    except StudyError as error:
        fail(str(error))
    write_output(output, study_page(study, top))
    echo_warnings(study.warnings)
    best = study.runs[0]
    count = len(study.runs)
    click.echo(f"Wrote {output}: {count} run{'s' if count != 1 else ''}", nl=False)
    if best.objective is not None:
        click.echo(f", best {best.label} with {study.objective} "
                   f"{best.objective:.5g} at epoch {best.objective_epoch} ({study.mode})")
    else:
        click.echo("")
