"""One writer process per run directory: a second training process on a run
being written fails at train begin with a one-line error and changes
nothing; a dead holder blocks nothing; readers are never blocked. Real
processes throughout (tests/scripts/train_paced.py trains with
standard_callbacks)."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import kcallbacks
from kcallbacks import writer_lock
from kcallbacks.run_format import WRITER_LOCK
from training import InterruptAt, Interrupted, digits_data, digits_model

PACED = os.path.join(os.path.dirname(__file__), "scripts", "train_paced.py")
KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
EPOCHS = 5


def paced(run_dir, seconds, *hold_file):
    return [sys.executable, PACED, str(run_dir), str(EPOCHS), str(seconds), *map(str, hold_file)]


def start_and_wait_for(run_dir, seconds, line, *hold_file):
    process = subprocess.Popen(paced(run_dir, seconds, *hold_file), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for printed in process.stdout:
        if printed.strip() == line:
            return process
    process.wait()
    raise AssertionError(f"never printed {line!r}: {process.stderr.read()[-2000:]}")


def training_record(run_dir):
    run = kcallbacks.load_run(run_dir)
    history = run.history.drop(columns=["wall_time", "epoch_time"])
    events = [(kind, epoch) for kind, epoch in zip(run.events["type"], run.events["epoch"])]
    checkpoints = sorted(n for n in os.listdir(os.path.join(run_dir, "checkpoints"))
                         if n != WRITER_LOCK)
    return run, history, run.batches, events, checkpoints


@pytest.mark.all_backends
def test_a_second_process_fails_at_train_begin_and_the_first_run_is_as_if_alone(tmp_path):
    alone = tmp_path / "alone"
    subprocess.run(paced(alone, 0), check=True, capture_output=True)

    shared = tmp_path / "shared"
    # The first holds its fit open at its last epoch until `release` exists.
    release = tmp_path / "release"
    first = start_and_wait_for(shared, 0, "EPOCH_DONE 0", release)
    try:
        # Readers never take the lock and are not blocked by it.
        assert len(kcallbacks.load_run(shared).history) >= 1
        for command in (["build", str(shared), "-o", str(tmp_path / "report.html")],
                        ["summary", str(shared)]):
            read = subprocess.run([KREPORT, *command], capture_output=True, text=True)
            assert read.returncode == 0, read.stderr

        second = subprocess.run(paced(shared, 0), capture_output=True, text=True)
        assert second.returncode != 0
        assert "TRAINING_DONE" not in second.stdout
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith("kcallbacks.writer_lock.RunDirectoryLockedError: ")
        assert f"{shared}: this run directory is being written by process {first.pid} " \
               f"on {socket.gethostname()} since " in error
        assert "wait for that fit to end, or write to another directory" in error
    finally:
        release.touch()
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-2000:]

    run, history, batches, events, checkpoints = training_record(shared)
    _, history_alone, batches_alone, events_alone, checkpoints_alone = training_record(alone)
    np.testing.assert_array_equal(history.to_numpy(), history_alone.to_numpy())
    np.testing.assert_array_equal(batches.to_records(index=False),
                                  batches_alone.to_records(index=False))
    assert events == events_alone and checkpoints == checkpoints_alone
    assert len(run.manifest["attempts"]) == 1 and run.manifest["status"] == "finished"


@pytest.mark.all_backends
def test_a_sigkilled_holder_blocks_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = start_and_wait_for(run_dir, 0.5, "EPOCH_DONE 1")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The lock file stays, naming its last holder; the lock is gone with it.
    assert str(first.pid) in (run_dir / WRITER_LOCK).read_text()
    again = subprocess.run(paced(run_dir, 0), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    run = kcallbacks.load_run(run_dir)
    assert run.history["epoch"].tolist() == list(range(EPOCHS))
    assert "resumed" in set(run.events["type"])


def test_the_lock_is_held_for_the_fit_and_passed_on_in_the_process(tmp_path):
    run_dir = tmp_path / "run"
    probe = [sys.executable, "-c",
             "import sys; from kcallbacks import writer_lock\n"
             "try:\n    writer_lock.acquire(sys.argv[1], object())\n"
             "except writer_lock.RunDirectoryLockedError as e:\n    print(e); sys.exit(3)",
             str(run_dir)]

    class ProbeDuringFit(InterruptAt):
        def on_epoch_end(self, epoch, logs=None):
            self.during = subprocess.run(probe, capture_output=True, text=True)

    x, y = digits_data(128)
    model = digits_model()
    during = ProbeDuringFit(epoch=99)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[kcallbacks.HistoryLogger(run_dir), during])
    assert during.during.returncode == 3
    assert "\n" not in during.during.stdout.strip()
    # Released when the fit ended.
    assert not writer_lock.holds(run_dir)
    assert subprocess.run(probe).returncode == 0

    # A fit that ends by an exception keeps its lock (no on_train_end); the
    # next fit of the process takes it over, and lets go at its end.
    with pytest.raises(Interrupted):
        model.fit(x, y, epochs=3, verbose=0,
                  callbacks=[kcallbacks.HistoryLogger(run_dir), InterruptAt(epoch=1)])
    assert writer_lock.holds(run_dir)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[kcallbacks.HistoryLogger(run_dir)])
    assert not writer_lock.holds(run_dir)
