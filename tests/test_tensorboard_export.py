"""`kreport tensorboard` read back by a real TensorBoard server on 127.0.0.1."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

import kcallbacks

BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardServer:
    """`tensorboard --logdir` as a subprocess, read through its HTTP data API."""

    def __init__(self, logdir, tmp_path, *options):
        self.port = free_port()
        self.log = open(tmp_path / "tensorboard.log", "wb")
        self.process = subprocess.Popen(
            [os.path.join(BIN, "tensorboard"), "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "1", *options],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def get(self, path, **query):
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def wait_for_tags(self, expected, timeout=90):
        """Polls until the scalar tags of every run in `expected` are loaded."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, "tensorboard exited"
            try:
                tags = self.get("/data/plugin/scalars/tags")
                if all(set(want) <= set(tags.get(run, {})) for run, want in expected.items()):
                    return tags
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not load the scalars in time"
            time.sleep(0.5)

    def wait_for_points(self, run, tag, count, timeout=180):
        """Polls until the server has loaded `count` points of a tag (a large
        file is read in pieces); returns them as `scalars` does."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, "tensorboard exited"
            try:
                points = self.scalars(run, tag)
                if len(points[1]) >= count:
                    return points
            except (OSError, ValueError):  # not up yet, or the tag not loaded yet
                pass
            assert time.monotonic() < deadline, f"tensorboard did not load {count} points of {tag} in time"
            time.sleep(1)

    def scalars(self, run, tag):
        """(wall times, steps, values) of one tag."""
        rows = self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
        return tuple(np.array(column) for column in zip(*rows))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def test_tensorboard_reads_back_the_history_and_batches(real_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(real_run, run_dir)
    logdir = tmp_path / "logs"
    for _ in range(2):  # the second export replaces the first: no doubled points
        result = subprocess.run(
            [os.path.join(BIN, "kreport"), "tensorboard", str(run_dir), "--logdir", str(logdir)],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
    assert len(os.listdir(logdir / "train")) == 1 and len(os.listdir(logdir / "validation")) == 1

    run = kcallbacks.load_run(run_dir)
    history, batches = run.history, run.batches
    server = TensorBoardServer(logdir, tmp_path)
    try:
        tags = server.wait_for_tags({
            "train": ["epoch_loss", "epoch_accuracy", "epoch_learning_rate", "batch_loss"],
            "validation": ["epoch_loss", "epoch_accuracy"],
        })
        assert set(tags) == {"train", "validation"}
        assert set(tags["validation"]) == {"epoch_loss", "epoch_accuracy"}

        epochs = history["epoch"].to_numpy()
        for run_name, prefix in (("train", ""), ("validation", "val_")):
            for metric in ("loss", "accuracy"):
                wall, steps, values = server.scalars(run_name, f"epoch_{metric}")
                np.testing.assert_array_equal(steps, epochs)
                np.testing.assert_allclose(values, history[prefix + metric], rtol=1e-6)
                np.testing.assert_allclose(wall, history["wall_time"], rtol=0, atol=1e-3)
        _, steps, rates = server.scalars("train", "epoch_learning_rate")
        np.testing.assert_allclose(rates, history["learning_rate"], rtol=1e-6)

        # The per-batch loss at global steps: continuous across the resume.
        _, steps, values = server.scalars("train", "batch_loss")
        np.testing.assert_array_equal(steps, batches["step"])
        np.testing.assert_array_equal(steps, np.arange(len(batches)))
        np.testing.assert_allclose(values, batches["loss"], rtol=1e-6)
        resume = run.events[run.events["type"] == "resumed"]
        assert int(resume["step"].iloc[0]) in steps
    finally:
        server.stop()


def test_export_keeps_other_event_files_and_needs_no_history(tmp_path):
    run = kcallbacks.RunDirectory(tmp_path / "run", create=True)
    logdir = tmp_path / "logs"
    (logdir / "train").mkdir(parents=True)
    foreign = logdir / "train" / "events.out.tfevents.1.host.123.0.v2"
    foreign.write_bytes(b"written by someone else")
    result = subprocess.run(
        [os.path.join(BIN, "kreport"), "tensorboard", run.path, "--logdir", str(logdir)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote no scalars" in result.stdout
    assert os.listdir(logdir) == ["train"]  # no empty validation/ left behind
    assert os.listdir(logdir / "train") == [foreign.name]
    assert foreign.read_bytes() == b"written by someone else"


def test_unwritable_logdir_is_one_line(tmp_path):
    run = kcallbacks.RunDirectory(tmp_path / "run", create=True)
    run.append_history({"epoch": 0, "loss": 1.0})
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the logdir should be")
    result = subprocess.run(
        [os.path.join(BIN, "kreport"), "tensorboard", run.path, "--logdir", str(blocker / "logs")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("kreport: error: ") and result.stderr.count("\n") == 1
    assert "cannot write event files" in result.stderr


def reference_records(scalars):
    """The event file body the way kreport wrote it before it framed
    records itself: one protobuf Event per scalar (`scalar_event`, the
    protobuf builder kreport keeps for each tag's first value), framed by
    tensorboard's RecordWriter (its pure-Python CRC32C)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    from kreport.event_files import scalar_event

    out = io.BytesIO()
    writer = RecordWriter(out)
    tagged = set()
    for tag, steps, values, wall_times in scalars:
        for step, value, wall_time in zip(steps, values, wall_times):
            first = tag not in tagged
            tagged.add(tag)
            writer.write(scalar_event(tag, step, value, wall_time, first=first).SerializeToString())
    return out.getvalue()


def without_first_record(data):
    """An event file less its first record (the file version, stamped with
    the time it was written)."""
    length = int.from_bytes(data[:8], "little")
    return data[8 + 4 + length + 4:]


def test_crc32c_matches_tensorboards():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from kreport.event_files import masked_crc32c

    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 8, 63, 200):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == reference(data)


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_event_bytes_are_tensorboards(tmp_path, monkeypatch, chunk):
    """The patched-template records are, byte for byte, what protobuf and
    tensorboard's RecordWriter write: steps of every varint length (0 left
    out, negative as 10 bytes), in and out of order; a wall time of +0.0
    (left out) and -0.0; values that float32 rounds, overflows or keeps as
    NaN and infinities; long and non-ASCII tags; a tag written in pieces."""
    from kreport import event_files

    monkeypatch.setattr(event_files, "CHUNK", chunk)
    steps = [0, 1, 127, 128, 16383, 16384, 2**21, 2**28, 2**35, 2**42, 2**49, 2**56, 2**63 - 1,
             -1, 5, 0, 3, 300, 4, 0]
    n = len(steps)
    rng = np.random.default_rng(0)
    values = rng.normal(size=n) * 10.0 ** rng.integers(-40, 40, n)
    values[:8] = [np.nan, np.inf, -np.inf, 1e300, -0.0, 0.0, 1e-46, 3.4028235e38]
    wall_times = 1.7e9 + rng.random(n) * 1e6
    wall_times[[1, 4, 9]] = [0.0, -0.0, np.nan]
    scalars = [
        ("epoch_loss", steps, values, wall_times),
        ("batch_ünïcode/λ", steps[::-1], values, wall_times),
        ("x" * 200, steps, values[::-1], wall_times),  # a Summary longer than 127 bytes
        ("epoch_loss", [7, 8], [1.5, 2.5], [1.0, 2.0]),  # more of a tag: no metadata again
        ("single", [1], [0.5], [1.7e9]),
    ]

    file = event_files.EventFile(str(tmp_path / "train"))
    for tag, tag_steps, tag_values, tag_wall_times in scalars:
        file.scalars(tag, np.array(tag_steps, dtype=np.int64), np.array(tag_values), np.array(tag_wall_times))
    file.scalar("scalar", 9, 0.25, 1.7e9)
    scalars.append(("scalar", [9], [0.25], [1.7e9]))
    assert file.publish() == sum(len(s[1]) for s in scalars)

    [written] = os.listdir(tmp_path / "train")
    data = (tmp_path / "train" / written).read_bytes()
    python_scalars = [(tag, [int(s) for s in st], [float(v) for v in vs], [float(w) for w in ws])
                      for tag, st, vs, ws in scalars]
    assert without_first_record(data) == reference_records(python_scalars)


def test_tensorboard_reads_back_a_large_export(tmp_path, monkeypatch):
    """A run of 200,000 per-batch rows (400,000 batch scalars, in several
    blocks of records, steps up to 3-byte varints): every point the server
    reads back is the run's."""
    from kreport import event_files

    monkeypatch.setattr(event_files, "CHUNK", 1 << 16)
    epochs, rows = 100, 200_000
    rng = np.random.default_rng(2)
    run = kcallbacks.RunDirectory(tmp_path / "run", create=True)
    for epoch in range(epochs):
        run.append_history({"epoch": epoch, "loss": float(rng.random()), "val_loss": float(rng.random()),
                            "learning_rate": 0.001, "wall_time": 1.7e9 + 60.0 * (epoch + 1),
                            "epoch_time": 60.0})
    records = np.zeros(rows, dtype=run.open_batch_log(["accuracy"]))
    records["step"] = np.arange(rows)
    records["epoch"] = records["step"] // (rows // epochs)
    records["batch"] = records["step"] % (rows // epochs)
    records["size"] = 32
    records["loss"] = rng.exponential(size=rows)
    records["accuracy"] = rng.random(rows)
    run.append_batches(records)

    logdir = tmp_path / "logs"
    loaded = kcallbacks.load_run(run.path)
    assert event_files.export(loaded, str(logdir)) == {"train": 2 * rows + 2 * epochs, "validation": epochs}

    server = TensorBoardServer(logdir, tmp_path, "--samples_per_plugin", f"scalars={rows}")
    try:
        batch_times = event_files._batch_wall_times(loaded.batches, loaded.history)
        for column in ("loss", "accuracy"):
            wall, steps, values = server.wait_for_points("train", f"batch_{column}", rows)
            np.testing.assert_array_equal(steps, records["step"])
            np.testing.assert_array_equal(values.astype(np.float32), records[column])
            np.testing.assert_allclose(wall, batch_times, rtol=0, atol=1e-3)
        history = loaded.history
        wall, steps, values = server.wait_for_points("validation", "epoch_loss", epochs)
        np.testing.assert_array_equal(steps, np.arange(epochs))
        np.testing.assert_allclose(values, history["val_loss"], rtol=1e-6)
        np.testing.assert_allclose(wall, history["wall_time"], rtol=0, atol=1e-3)
    finally:
        server.stop()
