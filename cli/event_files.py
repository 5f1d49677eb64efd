"""TensorBoard event files written without TensorFlow, in the layout of
Keras' TensorBoard callback (see `kreport tensorboard`).

An event file is a sequence of TFRecords (a little-endian uint64 length, the
masked CRC32C of those 8 bytes, the data, the masked CRC32C of the data), each
holding one serialized `Event` proto. We write exactly the bytes tensorboard's
`RecordWriter` writes for the events `tf.summary.scalar` would log, but not one
event at a time: a run can hold millions of per-batch scalars, and building a
proto and a pure-Python CRC for each took about a minute per million records.

Instead, all the scalars of a tag after its first one (which carries the
plugin metadata and goes through protobuf) share one byte layout, up to the
length of the step's varint and whether the wall time is zero: a template
record per layout is patched with numpy, column by column. CRC32C is affine
in the data, so the CRC of a patched record is the template's CRC XOR one
table lookup per patched byte (`_Layout`). tests/test_tensorboard_export.py
checks the bytes against tensorboard's `RecordWriter` and protobuf.

(Tensorboard's `EventFileWriter` would also import TensorFlow through
`tensorboard.compat` when TensorFlow is installed.) Our files end in
`.kreport`; an export replaces the ones an earlier export left in the same
run directories, so running it twice gives no duplicate points, and files
from other writers are left alone.
"""

import contextlib
import glob
import os
import socket
import struct
import tempfile
import time

import numpy as np
import pandas as pd
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.scalar import metadata

from kcallbacks.run_format import BATCH_POSITION_FIELDS
from kreport.analysis import is_numeric, numeric_metrics

FILE_SUFFIX = ".kreport"
TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
# Scalars patched into one block of records at a time (bounds the memory).
CHUNK = 1 << 20


# --- CRC32C (Castagnoli), as TFRecord framing uses it ---------------------

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _crc_table():
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc_table()
_TABLE_LIST = _TABLE.tolist()
# _SHIFTED[d][b]: the CRC register (started at 0, not inverted) after byte b
# and then d zero bytes: what byte b contributes to the CRC of any data it
# is followed by d bytes in. Grown on demand by _shifted.
_SHIFTED = [_TABLE]


def crc32c(data):
    """CRC32C of `data` (bytes), in pure Python: only for short records."""
    crc = 0xFFFFFFFF
    table = _TABLE_LIST
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """The masked CRC32C that TFRecord framing stores, of `data` (bytes)."""
    return _mask(crc32c(data))


def _mask(crc):
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _mask_array(crc):
    rotated = (crc >> np.uint32(15)) | (crc << np.uint32(17))
    return rotated + np.uint32(_MASK_DELTA)  # wraps modulo 2**32, as the mask does


def _shifted(distance):
    while len(_SHIFTED) <= distance:
        previous = _SHIFTED[-1]
        _SHIFTED.append((previous >> np.uint32(8)) ^ _TABLE[previous & np.uint32(0xFF)])
    return _SHIFTED[distance]


def _pair_table(distance):
    """What two adjacent bytes (as a little-endian uint16, the first byte
    followed by `distance` bytes) contribute to a CRC."""
    pair = np.arange(1 << 16, dtype=np.uint32)
    return _shifted(distance)[pair & 0xFF] ^ _shifted(distance - 1)[pair >> 8]


_PAIR_TABLES = {}


def _crc_of_pairs(crc, pairs, distance):
    """XORs into `crc` what the uint16 columns `pairs` (n, k) contribute,
    the first byte of column 0 followed by `distance` bytes."""
    for column in range(pairs.shape[1]):
        d = distance - 2 * column
        table = _PAIR_TABLES.get(d)
        if table is None:
            table = _PAIR_TABLES[d] = _pair_table(d)
        crc ^= table.take(pairs[:, column])


def frame(data):
    """`data` as one TFRecord, as tensorboard's RecordWriter frames it."""
    header = struct.pack("<Q", len(data))
    return b"".join((
        header, struct.pack("<I", masked_crc32c(header)), data, struct.pack("<I", masked_crc32c(data)),
    ))


# --- scalar events --------------------------------------------------------

def _varint(number):
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _varint_lengths(steps):
    """Bytes of each uint64's varint; 0 for 0, which proto3 leaves out."""
    lengths = (steps != 0).astype(np.int8)
    for shift in range(7, 64, 7):
        lengths += steps >= np.uint64(1 << shift)
    return lengths


def scalar_event(tag, step, value, wall_time, first=False):
    """One scalar as tf.summary writes it (a float32 tensor with the scalar
    plugin's metadata on a tag's first value), built with protobuf."""
    summary_value = summary_pb2.Summary.Value(
        tag=tag,
        tensor=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            float_val=[value],
        ),
    )
    if first:
        summary_value.metadata.CopyFrom(metadata.create_summary_metadata(display_name=None, description=None))
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=[summary_value]))


def _summary_template(tag):
    """(bytes before, bytes after) the float32 value in the serialized
    Summary of one of the tag's scalars (not its first)."""
    marks = (b"\x11\x22\x33\x44", b"\x55\x66\x77\x08")  # two finite float32s, no byte in common
    one, two = (
        scalar_event(tag, 0, struct.unpack("<f", mark)[0], 0.0).summary.SerializeToString() for mark in marks
    )
    at = one.find(marks[0])
    if at < 0 or len(one) != len(two) or one[:at] != two[:at] or one[at + 4:] != two[at + 4:]:
        raise AssertionError(f"unexpected Summary encoding for {tag!r}")
    return one[:at], one[at + 4:]


class _Layout:
    """The records of one tag's scalars whose Event has a wall time (or not:
    proto3 leaves out a +0.0) and a step of `step_bytes` varint bytes (0: a
    step of 0, left out): a template with those and the value zeroed, and
    where they go."""

    def __init__(self, summary, has_wall_time, step_bytes):
        prefix, suffix = summary
        data = bytearray()
        self.wall_at = self.step_at = None
        if has_wall_time:
            data += b"\x09"  # field 1, fixed64: wall_time
            self.wall_at = len(data)
            data += bytes(8)
        if step_bytes:
            data += b"\x10"  # field 2, varint: step
            self.step_at = len(data)
            data += bytes(step_bytes)
        self.step_bytes = step_bytes
        data += b"\x2a" + _varint(len(prefix) + 4 + len(suffix)) + prefix  # field 5: summary
        self.value_at = len(data)
        data += bytes(4) + suffix
        self.data_size = len(data)
        self.base_crc = crc32c(data)
        header = struct.pack("<Q", len(data))
        self.template = np.frombuffer(
            header + struct.pack("<I", masked_crc32c(header)) + data + bytes(4), dtype=np.uint8
        )
        self.data_at = 12

    def records(self, steps, values, wall_times):
        """(n, record size) uint8: the framed records of these scalars
        (steps uint64, values little-endian float32, wall times <f8)."""
        n = len(steps)
        out = np.empty((n, len(self.template)), dtype=np.uint8)
        out[:] = self.template
        crc = np.full(n, self.base_crc, dtype=np.uint32)
        end = self.data_size - 1  # distance from a byte to the data's end is end - offset

        def patch(offset, raw):  # raw: (n, even number of bytes) little-endian
            at = self.data_at + offset
            out[:, at:at + raw.shape[1] * 2] = raw.view(np.uint8).reshape(n, -1)
            _crc_of_pairs(crc, raw, end - offset)

        if self.wall_at is not None:
            patch(self.wall_at, wall_times.view(np.uint16).reshape(n, 4))
        patch(self.value_at, values.view(np.uint16).reshape(n, 2))
        if self.step_bytes:
            at = self.data_at + self.step_at
            for i in range(self.step_bytes):
                byte = ((steps >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8)
                if i < self.step_bytes - 1:
                    byte |= 0x80
                out[:, at + i] = byte
                crc ^= _shifted(end - self.step_at - i).take(byte)
        out[:, -4:] = _mask_array(crc).astype("<u4").view(np.uint8).reshape(n, 4)
        return out


class EventFile:
    """One TensorBoard event file, written to a temporary name first and
    given its final name by `publish`, which also deletes our older files."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        fd, self.temporary = tempfile.mkstemp(prefix=".kreport-", suffix=".tmp", dir=directory)
        self.file = os.fdopen(fd, "wb")
        self.tagged = set()
        self.count = 0
        self.layouts = {}
        version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self.file.write(frame(version.SerializeToString()))

    def event(self, event):
        """Writes one `Event` proto as it is (a summary no scalar layout
        fits, such as the HParams plugin's)."""
        self.file.write(frame(event.SerializeToString()))
        self.count += 1

    def scalar(self, tag, step, value, wall_time):
        """Writes one scalar."""
        self.scalars(tag, np.array([step]), np.array([value]), np.array([wall_time]))

    def scalars(self, tag, steps, values, wall_times):
        """Writes a tag's scalars in order: steps (integers), values and
        wall times (numbers, as float64 and float32 convert them)."""
        steps = np.asarray(steps, dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):  # as protobuf: too big is inf
            values = np.asarray(values, dtype=np.float64).astype("<f4")
        wall_times = np.asarray(wall_times, dtype="<f8")
        if not len(steps):
            return
        if tag not in self.tagged:
            # As tf.summary does: the plugin metadata goes with a tag's first value.
            self.tagged.add(tag)
            event = scalar_event(tag, int(steps[0]), float(values[0]), float(wall_times[0]), first=True)
            self.file.write(frame(event.SerializeToString()))
            self.count += 1
            steps, values, wall_times = steps[1:], values[1:], wall_times[1:]
        for start in range(0, len(steps), CHUNK):
            part = slice(start, start + CHUNK)
            self._write_block(tag, steps[part], values[part], wall_times[part])

    def _write_block(self, tag, steps, values, wall_times):
        steps = steps.view(np.uint64)  # a negative step is a 10-byte varint, as protobuf writes it
        kinds = _varint_lengths(steps) + 16 * (wall_times.view(np.uint64) != 0)
        starts = np.flatnonzero(kinds[1:] != kinds[:-1]) + 1
        bounds = [0, *starts.tolist(), len(kinds)]
        run_kinds = kinds[bounds[:-1]].tolist()
        records = {}
        for kind in set(run_kinds):
            layout = self._layout(tag, kind)
            chosen = slice(None) if len(run_kinds) == 1 else kinds == kind
            records[kind] = layout.records(steps[chosen], values[chosen], wall_times[chosen])
        used = dict.fromkeys(records, 0)
        for kind, start, end in zip(run_kinds, bounds[:-1], bounds[1:]):
            first = used[kind]
            used[kind] = first + end - start
            self.file.write(records[kind][first:used[kind]])
        self.count += len(steps)

    def _layout(self, tag, kind):
        layout = self.layouts.get((tag, kind))
        if layout is None:
            if (tag, None) not in self.layouts:
                self.layouts[tag, None] = _summary_template(tag)
            layout = _Layout(self.layouts[tag, None], has_wall_time=kind >= 16, step_bytes=kind % 16)
            self.layouts[tag, kind] = layout
        return layout

    def publish(self, remove_empty=True):
        """Replaces the files earlier exports left here with this one (with
        none, if it holds no record); returns the number of records (of
        scalars, for a file of scalars). With nothing written, the
        directory goes too if that leaves it empty and `remove_empty`."""
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
            if remove_empty:
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


def epoch_run_and_tag(column):
    """(run name, tag) of a history column's scalars: `val_loss` is
    `epoch_loss` in the validation run, `loss` `epoch_loss` in train."""
    if column.startswith("val_"):
        return VALIDATION_RUN, f"epoch_{column[4:]}"
    return TRAIN_RUN, f"epoch_{column}"


def epoch_series(run):
    """(history column, epochs, values, wall times) for each numeric metric
    column and the learning rate: the epochs that logged it."""
    history = run.history
    if not len(history):
        return
    columns, _ = numeric_metrics(history)
    if is_numeric(history, "learning_rate"):
        columns.append("learning_rate")
    wall_times = _epoch_wall_times(history)
    epochs = history["epoch"].to_numpy()
    for column in columns:
        logged = run.recorded[column].to_numpy(dtype=bool)
        yield column, epochs[logged], _numbers(history, column)[logged], wall_times[logged]


def epoch_scalars(run):
    """(run name, tag, epochs, values, wall times) for each history column,
    the values it logged: `val_` columns go to the validation run without
    their prefix."""
    for column, epochs, values, wall_times in epoch_series(run):
        yield *epoch_run_and_tag(column), epochs, values, wall_times


def export(run, logdir):
    """Writes `run` as event files under `logdir`; returns {run name: number
    of scalars} for the runs that got any."""
    files = {name: EventFile(os.path.join(logdir, name)) for name in (TRAIN_RUN, VALIDATION_RUN)}
    try:
        for run_name, tag, epochs, values, wall_times in epoch_scalars(run):
            files[run_name].scalars(tag, epochs, values, wall_times)
        batches = run.batches
        if len(batches):
            batch_times = _batch_wall_times(batches, run.history)
            steps = batches["step"].to_numpy()
            for column in batches.columns:
                if column not in BATCH_POSITION_FIELDS:
                    files[TRAIN_RUN].scalars(f"batch_{column}", steps, batches[column].to_numpy(), batch_times)
    except BaseException:
        for file in files.values():
            file.discard()
        raise
    counts = {name: file.publish() for name, file in files.items()}
    return {name: count for name, count in counts.items() if count}
