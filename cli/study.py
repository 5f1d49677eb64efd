"""A study: the runs found under some directories, each with its
hyperparameters and its value of one objective, ranked by it.

Runs are read without their per-batch logs (a study compares epochs), all
their histories into one DataFrame, and a run that cannot be read is
reported, not fatal: in a sweep that is still going, some runs are always
half-written.
"""

import dataclasses
import math
import os

from kcallbacks.run_format import MANIFEST
from kreport import analysis

# Folders inside a run that hold no runs of their own.
_RUN_PARTS = {"backup", "checkpoints", "tensorboard"}


class StudyError(Exception):
    """A study that cannot be made (no run found, an unknown objective)."""


@dataclasses.dataclass
class StudyRun:
    index: int  # its rows in `Study.history` have run == index
    label: str  # its path relative to the study's root
    path: str
    manifest: dict
    state: str  # see `run_state`
    epochs: int
    hparams: dict
    objective: float | None
    objective_epoch: int | None
    best: dict  # monitored quantity -> (best value, epoch)


@dataclasses.dataclass
class Study:
    runs: list  # StudyRun, best first; runs without the objective last
    history: object  # every run's epoch rows, one DataFrame with a `run` column
    metrics: list  # the numeric metrics any run logs
    objective: str
    mode: str  # "min" or "max"
    mode_source: str  # where the direction came from, for the page
    quantities: list  # the monitored quantities shown with their best values
    hparam_names: list  # the table's and the charts' hyperparameters
    same_everywhere: dict  # hyperparameters with one value in every run
    warnings: list


def find_run_directories(paths):
    """[(run directory, label)] for the runs among `paths` and under them
    at any depth, in path order, each once. A run's label is its path under
    the PATH it was found in (a PATH that is a run: its name), made longer
    where two would read the same. A path that is neither a run nor holds
    one is a StudyError."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise StudyError(f"{path}: no such directory")
        here = []
        for directory, folders, files in os.walk(path):
            folders.sort()
            if MANIFEST in files:
                label = os.path.relpath(directory, path)
                if label == ".":
                    label = os.path.basename(os.path.abspath(path))
                here.append((os.path.normpath(directory), label))
                folders[:] = [f for f in folders if f not in _RUN_PARTS]
        if not here:
            raise StudyError(f"{path}: neither a run directory nor a directory holding runs")
        found += here
    unique = {}
    for directory, label in found:
        unique.setdefault(os.path.realpath(directory), (directory, label))
    runs = list(unique.values())
    return [(d, _unique_label(d, label, runs)) for d, label in runs]


def _unique_label(directory, label, runs):
    """`label`, or where another run has it too, the shortest tail of the
    absolute path that no other run's path ends with."""
    if sum(other == label for _, other in runs) == 1:
        return label
    parts = os.path.abspath(directory).split(os.sep)
    others = [os.path.abspath(d).split(os.sep) for d, _ in runs if d != directory]
    for length in range(2, len(parts) + 1):
        tail = parts[-length:]
        if all(o[-length:] != tail for o in others):
            return os.path.join(*tail)
    return os.path.abspath(directory)


def load_study(paths, objective=None, mode=None):
    """Reads the runs under `paths` into a `Study` ranked by `objective`
    (None: what the runs' callbacks monitor, else val_loss or loss), in
    `mode` ("min"/"max"; None: as the callbacks declare it, else from the
    name, as they infer it). Per-batch logs are not read."""
    from kcallbacks.run_reader import load_histories

    found = find_run_directories(paths)
    directories = [d for d, _ in found]
    labels = [label for _, label in found]
    manifests, history, non_finite, run_warnings = load_histories(directories)
    by_metric = {}
    for run, column, epoch in non_finite:
        by_metric.setdefault((run, column), []).append(epoch)
    for (run, column), epochs in sorted(by_metric.items()):
        run_warnings[run].append(
            f"{column} is NaN or infinite in epochs {analysis.epoch_ranges(epochs)}")
    warnings = [f"{label}: {w}" for label, ws in zip(labels, run_warnings) for w in ws]
    readable = [i for i, m in enumerate(manifests) if m is not None]
    if not readable:
        raise StudyError("no run could be read")

    metrics = [m for m in analysis.numeric_metrics(history.drop(columns="run"))[0]
               if history[m].notna().any()] if len(history) else []
    monitored = {}
    for i in readable:
        for name, declared, _ in analysis.monitored_quantities(manifests[i], metrics):
            if name in metrics and (name not in monitored or monitored[name] is None):
                monitored[name] = declared
    if objective is not None and metrics and objective not in metrics:
        raise StudyError(  # a typo, most likely
            f"no run logs the objective '{objective}'; the runs log: {', '.join(metrics)}"
        )
    # No run has an epoch yet (a sweep just started): the page lists them.
    objective = objective or _default_objective(monitored, metrics)
    mode, mode_source = direction(objective, mode, [manifests[i] for i in readable])
    quantities = [objective] + [name for name in monitored if name != objective]
    best = {name: _best_per_run(history, name, mode if name == objective
                                else analysis.mode_for(name, monitored[name]))
            if name in metrics else {} for name in quantities}
    epochs = history.groupby("run").size().to_dict() if len(history) else {}

    runs = []
    for i in readable:
        value, epoch = best[objective].get(i, (None, None))
        runs.append(StudyRun(
            index=i, label=labels[i], path=directories[i], manifest=manifests[i],
            state=run_state(manifests[i], directories[i]), epochs=int(epochs.get(i, 0)),
            hparams=hparams_of(manifests[i]), objective=value, objective_epoch=epoch,
            best={name: best[name][i] for name in quantities if i in best[name]},
        ))
    runs.sort(key=lambda r: rank_key(r.objective, mode))
    names, same = hparam_columns([r.hparams for r in runs], [r.manifest for r in runs])
    return Study(runs, history, metrics, objective, mode, mode_source, quantities,
                 names, same, warnings)


def _best_per_run(history, name, mode):
    """{run index: (best finite value, its epoch)} of metric `name`."""
    import numpy as np

    values = history[name].to_numpy(dtype="float64")
    finite = np.isfinite(values)
    if not finite.any():
        return {}
    frame = history.loc[finite, ["run", "epoch", name]]
    ordered = frame.sort_values(["run", name], ascending=[True, mode == "min"], kind="stable")
    firsts = ordered.drop_duplicates("run", keep="first")
    return {int(r): (float(v), int(e)) for r, e, v in
            zip(firsts["run"], firsts["epoch"], firsts[name])}


def run_state(manifest, path):
    """What the table says of a run: `finished`, `stopped early`,
    `running` (its writer holds the lock now), `interrupted` (marked
    running, but no process writes it: killed, or its fit raised),
    `running?` (its writer may be on another host), `pre-empted`,
    `not started`."""
    from kcallbacks import writer_lock

    status = analysis.as_text(manifest.get("status")) or "unknown"
    if status == "running":
        held = writer_lock.is_written_now(path)
        return {True: "running", False: "interrupted", None: "running?"}[held]
    return {
        "finished": "finished",
        "stopped_early": "stopped early",
        "preempted": "pre-empted",
        "created": "not started",
    }.get(status, status.replace("_", " "))


def hparams_of(manifest):
    """The run's recorded hyperparameters (a flat dict of scalars and
    strings); a keras-tuner trial's values for a run made before
    hyperparameters were recorded."""
    hparams = analysis.as_dict(manifest.get("hparams"))
    if not hparams:
        hparams = analysis.as_dict(analysis.as_dict(manifest.get("trial")).get("hyperparameters"))
    return {str(k): v for k, v in hparams.items()
            if v is None or isinstance(v, (bool, int, float, str))}


def _default_objective(monitored, metrics):
    """The first quantity the runs' callbacks monitor, else val_loss or loss."""
    if monitored:
        return next(iter(monitored))
    return "val_loss" if "val_loss" in metrics else "loss"


def direction(objective, mode, manifests):
    """(mode, where it came from): `mode` as given, else that of a callback
    monitoring `objective`, else what its name says."""
    if mode is not None:
        return mode, "--" + mode
    for manifest in manifests:
        for callback in analysis.as_list(manifest.get("callbacks")):
            config = analysis.as_dict(analysis.as_dict(callback).get("config"))
            if config.get("monitor") == objective and config.get("mode") in ("min", "max"):
                name = str(analysis.as_dict(callback).get("class", "?")).rsplit(".", 1)[-1]
                return config["mode"], f"{name}'s mode"
    return analysis.mode_for(objective), "inferred from the name"


def rank_key(value, mode):
    """Sorts runs best first; a run without a finite value last."""
    if value is None or not math.isfinite(value):
        return (1, 0.0)
    return (0, value if mode == "min" else -value)


def hparam_columns(all_hparams, manifests):
    """(names shown as columns, {name: value} the same in every run). A
    name is a column if any run was given it (not only recorded
    automatically) or its value differs between runs."""
    order, given = [], set()
    for hparams, manifest in zip(all_hparams, manifests):
        automatic = set(analysis.as_list(manifest.get("hparams_automatic")))
        for name in hparams:
            if name not in order:
                order.append(name)
            if name not in automatic:
                given.add(name)
    columns, same = [], {}
    for name in order:
        values = {_key(h.get(name, _ABSENT)) for h in all_hparams}
        if name in given or len(values) > 1:
            columns.append(name)
        else:
            same[name] = all_hparams[0][name]
    columns.sort(key=lambda name: name not in given)  # given ones first (stable)
    return columns, same


_ABSENT = object()


def _key(value):
    return ("absent",) if value is _ABSENT else (type(value).__name__, value)


def is_numeric_hparam(values):
    """Whether a column's values (None where a run lacks it) are numbers."""
    present = [v for v in values if v is not None]
    return bool(present) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
    )
