"""The HParams dashboard of `kreport tensorboard`: the hparams plugin's
summaries (the experiment, and each run's session start and end), built with
the `tensorboard` package's protocol buffers, without TensorFlow.

tensorboard's own builders do not fit: `tensorboard.plugins.hparams.summary`
imports TensorFlow, and `summary_v2` writes through it. We build the Summary
they build: one value, under a `_hparams_/...` tag, with the plugin data in
its metadata and an empty tensor.

How the plugin reads them: a session is a TensorBoard run (a directory)
holding a session start info (and an end info, for its status); a metric of
a session is a scalar in a run below it, named by its group (the path of
that run below the session) and tag: ours are ("train", "epoch_loss"),
("validation", "epoch_loss"), ..., as `kreport.event_files` writes them. The
experiment (every hparam with its domain, every metric) is in one run: the
logdir's root. Its value of a metric is the scalar's last one.

A lone run's session and experiment are at the logdir's root, as
`hp.KerasCallback` beside Keras' TensorBoard callback puts them. TensorBoard
names that run ".", and its hparams plugin then looks for the metrics in
runs "./train" and "./validation", which do not exist (it has "train" and
"validation"): `tensorboard --logdir LOGDIR` shows the session's hparams and
status without metric values; pointed at a directory above LOGDIR, or for a
study, it shows them. (Copies of the metrics in the root run would show
them, at the price of a "." run in the Scalars dashboard.)

Hyperparameters come from the manifest's `hparams` (a flat object of bools,
numbers, strings and nulls) and `hparams_automatic` (the names kcallbacks
recorded by itself). Anything else is skipped with a warning; a run without
them (written before they existed) is a session without hparams.
"""

import dataclasses
import datetime
import json
import math
import os
import time

from google.protobuf import struct_pb2
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from kcallbacks.run_format import HISTORY_NON_METRIC_COLUMNS
from kreport.event_files import EventFile, epoch_run_and_tag, epoch_series

# The manifest's `status` as the plugin's session status; others are unknown.
STATUSES = {
    "finished": api_pb2.STATUS_SUCCESS,
    "stopped_early": api_pb2.STATUS_SUCCESS,  # EarlyStopping ended it: a normal end
    "failed": api_pb2.STATUS_FAILURE,
    "preempted": api_pb2.STATUS_FAILURE,
    "running": api_pb2.STATUS_RUNNING,
}
AUTOMATIC_DESCRIPTION = "Recorded automatically by kcallbacks (nobody gave it)."

_BOOL, _NUMBER, _STRING = "bool", "number", "string"
_DATA_TYPES = {_BOOL: api_pb2.DATA_TYPE_BOOL, _NUMBER: api_pb2.DATA_TYPE_FLOAT64, _STRING: api_pb2.DATA_TYPE_STRING}


@dataclasses.dataclass
class Session:
    """What the dashboard shows of one run.

    Attributes:
        directory: where its session goes, relative to the logdir ("." for
            the logdir itself); its metrics are in `directory`/train and
            `directory`/validation.
        hparams: {name: bool, int, float or str}.
        automatic: the names in `hparams` that were recorded automatically.
        metrics: {(group, tag): history column} of its epoch metrics.
        status: an `api_pb2.Status`.
        start_time, end_time: Unix times (0: unknown).
    """

    directory: str
    hparams: dict
    automatic: set
    metrics: dict
    status: int
    start_time: float
    end_time: float


def run_hparams(manifest):
    """(hparams, automatic names, warnings) of a run's manifest: the values
    that are bools, finite numbers or strings; nulls (unset) are left out
    and anything else is skipped with a warning."""
    given = manifest.get("hparams")
    if given is None:
        return {}, set(), []
    if not isinstance(given, dict):
        return {}, set(), ["run.json: hparams is not an object; ignored"]
    hparams, warnings = {}, []
    for name, value in given.items():
        if value is None:
            continue
        if not isinstance(name, str) or not name:
            warnings.append(f"run.json: hparams has an empty name; {value!r} skipped")
        elif isinstance(value, (bool, str)):
            hparams[name] = value
        elif isinstance(value, (int, float)) and _finite(value):
            hparams[name] = value
        else:
            shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
            warnings.append(
                f"run.json: hparams[{name!r}] is {shown}, not a bool, finite number or string; skipped"
            )
    automatic = manifest.get("hparams_automatic")
    if not isinstance(automatic, list):
        if automatic is not None:
            warnings.append("run.json: hparams_automatic is not a list; ignored")
        automatic = []
    automatic = {name for name in automatic if isinstance(name, str) and name in hparams}
    return hparams, automatic, warnings


def session_of(run, directory):
    """(Session, warnings) of a `Run` (`kcallbacks.load_run`)."""
    manifest = run.manifest
    hparams, automatic, warnings = run_hparams(manifest)
    metrics = {}
    for column, epochs, _, _ in epoch_series(run):
        if column not in HISTORY_NON_METRIC_COLUMNS and len(epochs):  # else no scalar to find
            metrics[epoch_run_and_tag(column)] = column
    status = manifest.get("status")
    status = STATUSES.get(status, api_pb2.STATUS_UNKNOWN) if isinstance(status, str) else api_pb2.STATUS_UNKNOWN
    attempts = manifest.get("attempts")
    first_attempt = attempts[0] if isinstance(attempts, list) and attempts and isinstance(attempts[0], dict) else {}
    start_time = _timestamp(manifest.get("created")) or _timestamp(first_attempt.get("started"))
    end_time = 0.0
    if status != api_pb2.STATUS_RUNNING:
        end_time = _timestamp(manifest.get("ended")) or _timestamp(manifest.get("updated"))
    return Session(directory, hparams, automatic, metrics, status, start_time, end_time), warnings


def worth_a_session(session):
    """Whether a lone run has anything for the dashboard: hparams or metrics."""
    return bool(session.hparams or session.metrics)


def write(logdir, sessions):
    """Writes the experiment of `sessions` in `logdir` and each session in
    `logdir`/its directory, replacing what an earlier export wrote there;
    returns the experiment (an `api_pb2.Experiment`)."""
    experiment, kinds = experiment_of(sessions)
    root = EventFile(logdir)
    try:
        root.event(_event(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)))
        for session in sessions:
            if os.path.normpath(session.directory) == ".":
                _write_session(root, session, kinds)
                continue
            file = EventFile(os.path.join(logdir, session.directory))
            try:
                _write_session(file, session, kinds)
            except BaseException:
                file.discard()
                raise
            file.publish()
    except BaseException:
        root.discard()
        raise
    root.publish(remove_empty=False)
    return experiment


def experiment_of(sessions):
    """(the `api_pb2.Experiment` of `sessions`, {hparam: kind}): every hparam
    with the values the sessions gave it (a number's domain is an interval, a
    bool's and a string's the set of its values; an hparam whose values are
    of several kinds is a string), and every metric."""
    values, kinds, automatic_everywhere = {}, {}, {}
    for session in sessions:
        for name, value in session.hparams.items():
            values.setdefault(name, []).append(value)
            kinds.setdefault(name, set()).add(_kind(value))
            automatic_everywhere[name] = automatic_everywhere.get(name, True) and name in session.automatic
    kinds = {name: kind.pop() if len(kind) == 1 else _STRING for name, kind in kinds.items()}
    hparam_infos = []
    for name in sorted(values):
        kind = kinds[name]
        info = api_pb2.HParamInfo(name=name, type=_DATA_TYPES[kind])
        if automatic_everywhere[name]:
            info.description = AUTOMATIC_DESCRIPTION
        if kind == _NUMBER:
            numbers = [float(value) for value in values[name]]
            info.domain_interval.min_value = min(numbers)
            info.domain_interval.max_value = max(numbers)
            info.differs = len(set(numbers)) > 1
        else:
            distinct = sorted({_coerce(value, kind) for value in values[name]})
            info.domain_discrete.extend(distinct)
            info.differs = len(distinct) > 1
        hparam_infos.append(info)
    metrics = {}
    for session in sessions:
        for name, column in session.metrics.items():
            metrics.setdefault(name, column)
    metric_infos = [
        api_pb2.MetricInfo(
            name=api_pb2.MetricName(group=group, tag=tag), display_name=metrics[group, tag],
            dataset_type=api_pb2.DATASET_VALIDATION if metrics[group, tag].startswith("val_")
            else api_pb2.DATASET_TRAINING,
        )
        for group, tag in sorted(metrics)
    ]
    starts = [session.start_time for session in sessions if session.start_time]
    experiment = api_pb2.Experiment(
        description="Exported by kreport tensorboard.",
        time_created_secs=min(starts) if starts else time.time(),
        hparam_infos=hparam_infos, metric_infos=metric_infos,
    )
    return experiment, kinds


def _write_session(file, session, kinds):
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=session.start_time)
    for name, value in session.hparams.items():
        start.hparams[name].CopyFrom(_value(_coerce(value, kinds[name])))
    file.event(_event(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)))
    end = plugin_data_pb2.SessionEndInfo(status=session.status, end_time_secs=session.end_time)
    file.event(_event(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)))


def _event(tag, plugin_data):
    """An Event with the Summary `tensorboard.plugins.hparams.summary` builds."""
    value = summary_pb2.Summary.Value(
        tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR,
    )
    return event_pb2.Event(wall_time=time.time(), step=0, summary=summary_pb2.Summary(value=[value]))


def _kind(value):
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, str):
        return _STRING
    return _NUMBER


def _coerce(value, kind):
    """`value` as an hparam of `kind` holds it: a string, if it is of another kind."""
    if kind != _STRING or isinstance(value, str):
        return value
    return json.dumps(value)  # true, 64, 0.001


def _value(value):
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    return struct_pb2.Value(number_value=float(value))


def _finite(number):
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an int too big for a float
        return False


def _timestamp(text):
    """Unix time of an ISO 8601 string, or 0.0 if it is not one."""
    if not isinstance(text, str):
        return 0.0
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0
