"""`kreport tensorboard` read back by a real TensorBoard server on 127.0.0.1."""

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

import kcallbacks

BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardServer:
    """`tensorboard --logdir` as a subprocess, read through its HTTP data API."""

    def __init__(self, logdir, tmp_path):
        self.port = free_port()
        self.log = open(tmp_path / "tensorboard.log", "wb")
        self.process = subprocess.Popen(
            [os.path.join(BIN, "tensorboard"), "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "1"],
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
