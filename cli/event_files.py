"""TensorBoard event files written without TensorFlow, in the layout of
Keras' TensorBoard callback (see `kreport tensorboard`).

Events are framed by tensorboard's own `RecordWriter` into plain files (its
`EventFileWriter` would import TensorFlow through `tensorboard.compat` when
TensorFlow is installed). Our files end in `.kreport`; an export replaces the
ones an earlier export left in the same run directories, so running it twice
gives no duplicate points, and files from other writers are left alone.
"""

import glob
import os
import socket
import tempfile
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.scalar import metadata
from tensorboard.summary.writer.record_writer import RecordWriter

from kreport.analysis import numeric_metrics

FILE_SUFFIX = ".kreport"
TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
# Per-batch columns that say where a record is, not what was measured.
BATCH_POSITION = ("step", "epoch", "batch", "size")


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
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        for old in glob.glob(os.path.join(glob.escape(self.directory), f"*{FILE_SUFFIX}")):
            os.unlink(old)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}{FILE_SUFFIX}"
        os.replace(self.temporary, os.path.join(self.directory, name))
        return self.count

    def discard(self):
        self.file.close()
        os.unlink(self.temporary)


def _batch_wall_times(batches, history):
    """Unix times for each batch record: the batch log has none, so they are
    interpolated between the ends of the epochs the history timed."""
    steps = batches["step"].to_numpy(dtype="float64")
    epochs = batches["epoch"].to_numpy()
    if "wall_time" not in history or not len(history):
        return np.full(len(steps), time.time())
    ends_at = dict(zip(history["epoch"].tolist(), history["wall_time"].tolist()))
    last_of_epoch = np.flatnonzero(np.r_[epochs[1:] != epochs[:-1], True])
    known = [(steps[i], ends_at.get(int(epochs[i]))) for i in last_of_epoch]
    known = [(s, t) for s, t in known if t is not None and np.isfinite(t)]
    if not known:
        return np.full(len(steps), float(np.nanmax(history["wall_time"])))
    xp, fp = zip(*known)
    return np.interp(steps, xp, fp)


def export(run, logdir):
    """Writes `run` as event files under `logdir`; returns {run name: count}."""
    history = run.history
    metrics, _ = numeric_metrics(history)
    columns = metrics + (["learning_rate"] if "learning_rate" in history else [])
    written = {}
    files = {name: EventFile(os.path.join(logdir, name)) for name in (TRAIN_RUN, VALIDATION_RUN)}
    try:
        wall_times = (
            history["wall_time"].to_numpy(dtype="float64")
            if "wall_time" in history
            else np.full(len(history), time.time())
        )
        for row, (epoch, wall_time) in enumerate(zip(history["epoch"].tolist() if len(history) else [], wall_times)):
            wall_time = float(wall_time) if np.isfinite(wall_time) else time.time()
            for column in columns:
                if not run.recorded[column].iat[row]:
                    continue
                value = float(history[column].iat[row])
                if column.startswith("val_"):
                    files[VALIDATION_RUN].scalar(f"epoch_{column[4:]}", epoch, value, wall_time)
                else:
                    files[TRAIN_RUN].scalar(f"epoch_{column}", epoch, value, wall_time)

        batches = run.batches
        if len(batches):
            batch_times = _batch_wall_times(batches, history)
            steps = batches["step"].tolist()
            for column in batches.columns:
                if column in BATCH_POSITION:
                    continue
                tag = f"batch_{column}"
                for step, value, wall_time in zip(steps, batches[column].tolist(), batch_times.tolist()):
                    files[TRAIN_RUN].scalar(tag, step, value, wall_time)
    except BaseException:
        for file in files.values():
            file.discard()
        raise
    for name, file in files.items():
        if file.count:
            written[name] = file.publish()
        else:
            # Nothing to show in this run: drop our old files there too.
            file.discard()
            for old in glob.glob(os.path.join(glob.escape(file.directory), f"*{FILE_SUFFIX}")):
                os.unlink(old)
    return written
