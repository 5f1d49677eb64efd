"""TensorBoard event files written without TensorFlow, in the layout of
Keras' TensorBoard callback (see `kreport tensorboard`).

Events are framed by tensorboard's own `RecordWriter` into plain files (its
`EventFileWriter` would import TensorFlow through `tensorboard.compat` when
TensorFlow is installed). Our files end in `.kreport`; an export replaces the
ones an earlier export left in the same run directories, so running it twice
gives no duplicate points, and files from other writers are left alone.
"""

import contextlib
import glob
import os
import socket
import tempfile
import time

import numpy as np
import pandas as pd
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.scalar import metadata
from tensorboard.summary.writer.record_writer import RecordWriter

from kcallbacks.run_format import BATCH_POSITION_FIELDS
from kreport.analysis import is_numeric, numeric_metrics

FILE_SUFFIX = ".kreport"
TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
# Per-batch columns that say where a record is, not what was measured.


class EventFile:
    """One TensorBoard event file, written to a temporary name first and
    given its final name by `publish`, which also deletes our older files."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        fd, self.temporary = tempfile.mkstemp(prefix=".kreport-", suffix=".tmp", dir=directory)
        self.file = os.fdopen(fd, "wb")
        self.writer = RecordWriter(self.file)
        self.tagged = set()
        self.count = 0
        version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self.writer.write(version.SerializeToString())

    def scalar(self, tag, step, value, wall_time):
        summary_value = summary_pb2.Summary.Value(
            tag=tag,
            tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                float_val=[value],
            ),
        )
        # As tf.summary does: the plugin metadata goes with a tag's first value.
        if tag not in self.tagged:
            self.tagged.add(tag)
            summary_value.metadata.CopyFrom(
                metadata.create_summary_metadata(display_name=None, description=None)
            )
        event = event_pb2.Event(
            wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=[summary_value])
        )
        self.writer.write(event.SerializeToString())
        self.count += 1

    def publish(self):
        """Replaces the files earlier exports left here with this one (with
        none, if it holds no scalar); returns the number of scalars."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        for old in glob.glob(os.path.join(glob.escape(self.directory), f"*{FILE_SUFFIX}")):
            os.unlink(old)
        if self.count:
            name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}{FILE_SUFFIX}"
            os.replace(self.temporary, os.path.join(self.directory, name))
        else:
            os.unlink(self.temporary)
            with contextlib.suppress(OSError):  # not empty: another writer's files
                os.rmdir(self.directory)
        return self.count

    def discard(self):
        self.file.close()
        os.unlink(self.temporary)


def _numbers(history, column):
    """A history column as float64; anything that is not a number reads as NaN."""
    return pd.to_numeric(history[column], errors="coerce").to_numpy(dtype="float64")


def _epoch_wall_times(history):
    now = time.time()
    if "wall_time" not in history:
        return np.full(len(history), now)
    wall_times = _numbers(history, "wall_time")
    return np.where(np.isfinite(wall_times), wall_times, now)


def _batch_wall_times(batches, history):
    """Unix times for each batch record: the batch log has none, so they are
    interpolated between the ends of the epochs the history timed."""
    steps = batches["step"].to_numpy(dtype="float64")
    epochs = batches["epoch"].to_numpy()
    ends_at = dict(zip(history["epoch"].tolist(), _epoch_wall_times(history).tolist())) if len(history) else {}
    last_of_epoch = np.flatnonzero(np.r_[epochs[1:] != epochs[:-1], True])
    known = [(steps[i], ends_at[int(epochs[i])]) for i in last_of_epoch if int(epochs[i]) in ends_at]
    if not known:
        return np.full(len(steps), time.time())
    xp, fp = zip(*known)
    return np.interp(steps, xp, fp)


def epoch_scalars(run):
    """(run name, tag, epoch, value, wall time) for each value the history
    logged: `val_` columns go to the validation run without their prefix."""
    history = run.history
    if not len(history):
        return
    columns, _ = numeric_metrics(history)
    if is_numeric(history, "learning_rate"):
        columns.append("learning_rate")
    wall_times = _epoch_wall_times(history)
    epochs = history["epoch"].to_numpy()
    for column in columns:
        if column.startswith("val_"):
            run_name, tag = VALIDATION_RUN, f"epoch_{column[4:]}"
        else:
            run_name, tag = TRAIN_RUN, f"epoch_{column}"
        logged = run.recorded[column].to_numpy(dtype=bool)
        for epoch, value, wall_time in zip(
            epochs[logged].tolist(), _numbers(history, column)[logged].tolist(), wall_times[logged].tolist()
        ):
            yield run_name, tag, epoch, value, wall_time


def export(run, logdir):
    """Writes `run` as event files under `logdir`; returns {run name: number
    of scalars} for the runs that got any."""
    files = {name: EventFile(os.path.join(logdir, name)) for name in (TRAIN_RUN, VALIDATION_RUN)}
    try:
        for run_name, tag, epoch, value, wall_time in epoch_scalars(run):
            files[run_name].scalar(tag, epoch, value, wall_time)
        batches = run.batches
        if len(batches):
            batch_times = _batch_wall_times(batches, run.history).tolist()
            steps = batches["step"].tolist()
            for column in batches.columns:
                if column not in BATCH_POSITION_FIELDS:
                    for step, value, wall_time in zip(steps, batches[column].tolist(), batch_times):
                        files[TRAIN_RUN].scalar(f"batch_{column}", step, value, wall_time)
    except BaseException:
        for file in files.values():
            file.discard()
        raise
    counts = {name: file.publish() for name, file in files.items()}
    return {name: count for name, count in counts.items() if count}
