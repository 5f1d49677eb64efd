"""What a run says, worked out once for every kreport command: its status, the
quantities it monitored and their best epochs, final metrics, checkpoints,
the points where something happened, and what looked wrong while reading.

Everything here tolerates a manifest or event log with missing or oddly typed
fields: a damaged run gets a report with warnings, not a traceback.
"""

import dataclasses
import datetime
import math

import numpy as np

from kcallbacks.run_format import HISTORY_NON_METRIC_COLUMNS, Event

# Manifest environment keys that name the Keras backend, shown on their own.
BACKEND_KEYS = ("backend", "backend_version")

# The marker kind of a saved checkpoint (saves and deletions are two events).
CHECKPOINT_MARKER = "checkpoint"

# Keras picks the direction of an "auto" monitor from the metric itself; we
# have no model, so metric names that mean "higher is better" decide.
HIGHER_IS_BETTER = (
    "acc", "auc", "precision", "recall", "f1", "fbeta", "iou", "r2",
    "top_k", "correlation", "psnr", "ssim", "dice",
)


def mode_for(name, declared=None):
    """"min" or "max": the declared mode, else what the metric's name says."""
    if declared in ("min", "max"):
        return declared
    base = name.removeprefix("val_").lower()
    if "loss" in base or "error" in base:
        return "min"
    return "max" if any(word in base for word in HIGHER_IS_BETTER) else "min"


@dataclasses.dataclass
class Quantity:
    """A metric with its best and final values."""

    name: str
    mode: str
    best_value: float | None
    best_epoch: int | None
    final: float | None
    monitored_by: list


@dataclasses.dataclass
class Checkpoint:
    epoch: int | None
    step: int | None
    path: str
    monitor: str | None
    value: float | None
    best: bool
    deleted: bool


@dataclasses.dataclass
class Preemption:
    """An attempt stopped by a signal (BackupAndRestore's `preempted`
    event): when, by which signal, and where the fit was saved."""

    time: datetime.datetime | None
    signal: str
    epoch: int | None
    batch: int | None
    step: int | None

    @property
    def text(self):
        where = f"epoch {self.epoch}" if self.epoch is not None else "an unknown point"
        if self.batch:
            where += f", batch {self.batch}"
        if self.step is not None:
            where += f" (step {self.step})"
        return f"pre-empted by {self.signal} at {where}"


@dataclasses.dataclass
class Marker:
    """Something from the event log to draw on the curves at an epoch."""

    kind: str  # CHECKPOINT_MARKER, or Event.LR_REDUCED, EARLY_STOP, RESUMED
    epoch: int
    text: str
    monitor: str | None = None


@dataclasses.dataclass
class RunSummary:
    name: str
    path: str
    status: str
    status_label: str
    started: datetime.datetime | None
    ended: datetime.datetime | None
    last_written: datetime.datetime | None
    epochs_done: int
    epochs_planned: int | None
    last_epoch: int | None
    resumes: int
    preemptions: list  # Preemption, oldest first
    versions: dict
    backend: object  # "jax 0.10.2": the Keras backend and its version, or None
    metrics: list
    quantities: list
    metric_stats: list
    checkpoints: list
    best_checkpoint: Checkpoint | None
    markers: list
    warnings: list

    @property
    def duration(self):
        """Seconds from the first start to the end, or to the last write."""
        end = self.ended or self.last_written
        if self.started is None or end is None:
            return None
        return max((end - self.started).total_seconds(), 0.0)


# --- small tolerant readers ---------------------------------------------------


def as_dict(value):
    return value if isinstance(value, dict) else {}


def as_list(value):
    return value if isinstance(value, list) else []


def as_text(value):
    return value if isinstance(value, str) else None


def is_present(value):
    if value is None:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def as_int(value):
    if isinstance(value, bool) or not is_present(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def as_float(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_time(value):
    """An ISO 8601 time as an aware datetime (UTC if no zone), or None."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def format_time(moment):
    if moment is None:
        return "unknown"
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds):
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def format_value(value):
    """A metric value for people: 4 significant digits, NaN and inf spelt out."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def epoch_ranges(epochs):
    """[3, 4, 5, 9] -> "3–5, 9"."""
    epochs = sorted(set(int(e) for e in epochs))
    parts, start = [], None
    for index, epoch in enumerate(epochs):
        if start is None:
            start = epoch
        if index + 1 == len(epochs) or epochs[index + 1] != epoch + 1:
            parts.append(str(start) if start == epoch else f"{start}–{epoch}")
            start = None
    return ", ".join(parts)


# --- the run's columns --------------------------------------------------------


def is_numeric(history, column):
    """Whether the history has `column` and it holds numbers."""
    return column in history and history[column].dtype.kind in "fiu"


def numeric_metrics(history):
    """(metric columns holding numbers, columns that do not)."""
    metrics, other = [], []
    for column in history.columns:
        if column in HISTORY_NON_METRIC_COLUMNS:
            continue
        if is_numeric(history, column):
            metrics.append(column)
        elif history[column].dtype.kind != "b":
            other.append(column)
    return metrics, other


def metric_groups(metrics):
    """(title, train column or None, validation column or None) for each
    curve pair: `loss` with `val_loss`, a validation-only metric alone."""
    present = set(metrics)
    groups = []
    for name in metrics:
        if name.startswith("val_") and name[4:] in present:
            continue
        if name.startswith("val_"):
            groups.append((name[4:], None, name))
        else:
            val = f"val_{name}"
            groups.append((name, name, val if val in present else None))
    return groups


def best_of(values, epochs, mode):
    """(best value, its epoch) over the finite values, or (None, None)."""
    values = np.asarray(values, dtype="float64")
    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    masked = np.where(finite, values, np.inf if mode == "min" else -np.inf)
    index = int(np.argmin(masked) if mode == "min" else np.argmax(masked))
    return float(values[index]), int(epochs[index])


def logged(run, column):
    """(epochs, values as float64) of the epochs whose row has `column`: a
    metric absent from an epoch (validation every few epochs, a metric that
    starts late) is left out rather than read as NaN."""
    mask = run.recorded[column].to_numpy(dtype=bool)
    return (
        run.history["epoch"].to_numpy()[mask],
        run.history[column].to_numpy(dtype="float64")[mask],
    )


def _final(values):
    return float(values[-1]) if len(values) else None


# --- events -------------------------------------------------------------------


def events_of(run, event_type):
    """The run's events of one type, as dicts without the absent fields."""
    events = run.events
    if not len(events) or "type" not in events:
        return []
    chosen = events[events["type"] == event_type]
    return [
        {key: value for key, value in row.items() if _is_field(value)}
        for row in chosen.to_dict("records")
    ]


def _is_field(value):
    return isinstance(value, (list, dict, str)) or is_present(value)


def checkpoints_of(run):
    deleted = {as_text(e.get("path")) for e in events_of(run, Event.CHECKPOINT_DELETED)}
    checkpoints = []
    for event in events_of(run, Event.CHECKPOINT_SAVED):
        path = as_text(event.get("path"))
        if path is None:
            continue
        checkpoints.append(
            Checkpoint(
                epoch=as_int(event.get("epoch")),
                step=as_int(event.get("step")),
                path=path,
                monitor=as_text(event.get("monitor")),
                value=as_float(event.get("value")),
                best=event.get("best") is True,
                deleted=path in deleted,
            )
        )
    return checkpoints


def markers_of(run, manifest):
    markers = []
    for c in checkpoints_of(run):
        if c.epoch is not None:
            what = "best checkpoint saved" if c.best else "checkpoint saved"
            value = f" ({c.monitor} = {format_value(c.value)})" if c.monitor else ""
            markers.append(Marker(CHECKPOINT_MARKER, c.epoch, f"{what}{value}: {c.path}", c.monitor))
    for event in events_of(run, Event.LR_REDUCED):
        epoch = as_int(event.get("epoch"))
        if epoch is not None:
            old, new = as_float(event.get("old")), as_float(event.get("new"))
            markers.append(
                Marker(Event.LR_REDUCED, epoch,
                       f"learning rate reduced {format_value(old)} → {format_value(new)}")
            )
    for event in events_of(run, Event.EARLY_STOP):
        epoch = as_int(event.get("epoch"))
        if epoch is not None:
            best = as_int(event.get("best_epoch"))
            monitor = as_text(event.get("monitor")) or "the monitor"
            text = f"early stop: {monitor} stopped improving"
            if best is not None:
                text += f" (best epoch {best}, {format_value(as_float(event.get('best_value')))})"
            if event.get("restored_best_weights") is True:
                text += "; best weights restored"
            markers.append(Marker(Event.EARLY_STOP, epoch, text, as_text(event.get("monitor"))))
    resumed = [
        (as_int(e.get("epoch")), as_int(e.get("step"))) for e in events_of(run, Event.RESUMED)
    ]
    if not resumed:
        # Without resume events, every attempt after the first is a resume.
        resumed = [
            (as_int(as_dict(a).get("initial_epoch")), None)
            for a in as_list(manifest.get("attempts"))[1:]
        ]
    for epoch, step in resumed:
        if epoch is not None:
            at_step = f", step {step}" if step is not None else ""
            markers.append(Marker(Event.RESUMED, epoch, f"resumed at epoch {epoch}{at_step}"))
    for preemption in preemptions_of(run):
        if preemption.epoch is not None:
            markers.append(Marker(Event.PREEMPTED, preemption.epoch, preemption.text))
    return markers


def preemptions_of(run):
    return [
        Preemption(
            time=parse_time(event.get("time")),
            signal=as_text(event.get("signal")) or "a signal",
            epoch=as_int(event.get("epoch")),
            batch=as_int(event.get("batch")),
            step=as_int(event.get("step")),
        )
        for event in events_of(run, Event.PREEMPTED)
    ]


# --- the whole picture --------------------------------------------------------


def monitored_quantities(manifest, metrics):
    """(name, declared mode, callback class names) for each monitored
    quantity: what the callbacks monitor, then val_loss (or loss)."""
    monitored = {}
    for callback in as_list(manifest.get("callbacks")):
        config = as_dict(as_dict(callback).get("config"))
        monitor = as_text(config.get("monitor"))
        if monitor:
            name = (as_text(as_dict(callback).get("class")) or "?").rsplit(".", 1)[-1]
            entry = monitored.setdefault(monitor, [as_text(config.get("mode")), []])
            entry[1].append(name)
    default = "val_loss" if "val_loss" in metrics else "loss"
    monitored.setdefault(default, [None, []])
    return [(name, mode, by) for name, (mode, by) in monitored.items()]


def summarize(run):
    """Works out a `RunSummary` from a loaded `Run`."""
    manifest = run.manifest
    history = run.history
    warnings = list(run.warnings)
    epochs = (
        history["epoch"].to_numpy() if "epoch" in history else np.arange(len(history))
    )

    metrics, not_numeric = numeric_metrics(history)
    for column in not_numeric:
        warnings.append(f"history column '{column}' does not hold numbers; it is not plotted")

    quantities = []
    for name, declared, by in monitored_quantities(manifest, metrics):
        if name not in metrics:
            if by:
                warnings.append(
                    f"{', '.join(by)} monitors '{name}', which the history does not have"
                )
            continue
        mode = mode_for(name, declared)
        at, values = logged(run, name)
        best, best_epoch = best_of(values, at, mode)
        quantities.append(Quantity(name, mode, best, best_epoch, _final(values), by))

    metric_stats = []
    for name in metrics:
        mode = mode_for(name)
        at, values = logged(run, name)
        best, best_epoch = best_of(values, at, mode)
        metric_stats.append(Quantity(name, mode, best, best_epoch, _final(values), []))
        non_finite = ~np.isfinite(values)
        if non_finite.any():
            warnings.append(f"{name} is NaN or infinite in epochs {epoch_ranges(at[non_finite])}")
        if len(at) < len(epochs):
            warnings.append(
                f"{name} was recorded in {len(at)} of {len(epochs)} epochs only ({epoch_ranges(at)})"
            )

    batches = run.batches
    if len(batches) and "loss" in batches:
        loss = batches["loss"].to_numpy(dtype="float64")
        bad = ~np.isfinite(loss)
        if bad.any():
            first = int(batches["step"].to_numpy()[np.argmax(bad)])
            warnings.append(non_finite_batches_warning(int(bad.sum()), first))

    status = as_text(manifest.get("status")) or "unknown"
    attempts = [as_dict(a) for a in as_list(manifest.get("attempts"))]
    resumes = max(len(attempts) - 1, 0)
    started = parse_time(attempts[0].get("started")) if attempts else None
    started = started or parse_time(manifest.get("created"))
    ended = parse_time(manifest.get("ended")) if status != "running" else None
    written = [parse_time(manifest.get("updated")), ended]
    if is_numeric(history, "wall_time"):
        written.append(parse_time(as_float(history["wall_time"].max())))
    last_written = max((t for t in written if t is not None), default=None)

    checkpoints = checkpoints_of(run)
    best_checkpoint = next(
        (c for c in reversed(checkpoints) if c.best and not c.deleted), None
    )
    markers = markers_of(run, manifest)

    if not len(history):
        warnings.append("no epoch has finished yet: the history is empty")

    environment = as_dict(manifest.get("environment"))
    versions = {
        key: value
        for key, value in environment.items()
        if key not in BACKEND_KEYS
        and isinstance(value, (str, int, float)) and not isinstance(value, bool)
    }
    backend = " ".join(
        as_text(environment.get(key)) for key in BACKEND_KEYS if as_text(environment.get(key))
    ) or None
    planned = as_int(as_dict(manifest.get("fit_params")).get("epochs"))
    return RunSummary(
        name=as_text(manifest.get("name")) or run.path.rstrip("/").rsplit("/", 1)[-1],
        path=run.path,
        status=status,
        status_label=status_label(status, resumes, last_written, markers),
        started=started,
        ended=ended,
        last_written=last_written,
        epochs_done=len(history),
        epochs_planned=planned,
        last_epoch=int(epochs[-1]) if len(epochs) else None,
        resumes=resumes,
        preemptions=preemptions_of(run),
        versions=versions,
        backend=backend,
        metrics=metrics,
        quantities=quantities,
        metric_stats=metric_stats,
        checkpoints=checkpoints,
        best_checkpoint=best_checkpoint,
        markers=markers,
        warnings=warnings,
    )


def non_finite_batches_warning(count, first_step):
    return f"per-batch loss is NaN or infinite at {count} steps (first at step {first_step})"


def status_label(status, resumes, last_written, markers):
    if status == "running":
        # A process that died leaves "running" behind: only the age of the
        # last write hints which it is.
        label = "running or interrupted"
        if last_written is not None:
            label += f" (last written {format_time(last_written)})"
    elif status == "stopped_early":
        stops = [m.epoch for m in markers if m.kind == Event.EARLY_STOP]
        label = f"stopped early at epoch {stops[-1]}" if stops else "stopped early"
    elif status == "created":
        label = "created (no epoch finished)"
    elif status == "preempted":
        stops = [m.text for m in markers if m.kind == Event.PREEMPTED]
        label = stops[-1] if stops else "pre-empted"
    else:
        label = status.replace("_", " ")
    if resumes:
        label += f", resumed {resumes} time{'s' if resumes > 1 else ''}"
    return label
