"""Pre-emption end to end: real SIGTERM and SIGINT sent to real training
subprocesses at random steps, twice in a row, and while a snapshot is being
written; each restarted run must end identical to an uninterrupted one with
no step trained twice."""

import glob
import os
import random
import re
import signal

import pytest

import kcallbacks
from resume_harness import batch_lines, run_to_completion, signal_when_line
from test_backup_and_restore import SCRIPT_OPTIONS, assert_same_run

# From the signal to the exit: one step and a snapshot of a small model, plus
# the interpreter's shutdown (TensorFlow's takes a second or two).
EXIT_BOUND_SECONDS = 20


def passed_over(lines, resumed_at):
    """The BATCH lines of batches a mid-epoch resume passed over."""
    epoch, batch = resumed_at
    return [l for l in lines if l.startswith(f"BATCH {epoch} ") and int(l.split()[2]) < batch]


@pytest.mark.all_backends
def test_sigterm_at_random_steps_resumes_exactly(tmp_path):
    epochs = 6
    extra = (*SCRIPT_OPTIONS, "--dropout", "unseeded")
    reference = run_to_completion(tmp_path / "reference", epochs, "epoch", *extra)
    total_steps = len(batch_lines(reference.splitlines()))

    rng = random.Random(13)
    run_dir = tmp_path / "resumed"
    trained, resumed_at = 0, None
    stops = []
    for attempt in range(3):
        # A random step of a random epoch still ahead of this attempt.
        epoch = rng.randrange(2 * attempt, 2 * attempt + 2)
        batch = rng.randrange(0, 9)  # 9 steps an epoch
        moment = f"BATCH {epoch} {batch}"
        status, seconds, lines, stderr = signal_when_line(
            run_dir, epochs, "epoch", lambda l, m=moment: l == m, [signal.SIGTERM], *extra)
        assert status == 143, (moment, stderr[-2000:])
        assert seconds < EXIT_BOUND_SECONDS, (moment, seconds)
        assert "BackupAndRestore: SIGTERM: the fit is saved at epoch" in stderr
        assert "TRAINING_DONE" not in lines
        steps = batch_lines(lines)
        trained += len(steps) - (len(passed_over(steps, resumed_at)) if resumed_at else 0)
        # Where it stopped: the signal lands while a later step may already run.
        stopped = re.search(r"saved at epoch (\d+), batch (\d+)", stderr)
        resumed_at = (int(stopped[1]), int(stopped[2]))
        assert resumed_at >= (epoch, batch + 1), (moment, resumed_at)
        stops.append((moment, resumed_at))
    out = run_to_completion(run_dir, epochs, "epoch", *extra).splitlines()
    trained += len(batch_lines(out)) - len(passed_over(batch_lines(out), resumed_at))
    assert trained == total_steps, f"{trained} steps trained in all, {total_steps} uninterrupted ({stops})"

    reference_run, resumed = assert_same_run(tmp_path / "reference", run_dir)
    preempted = resumed.events[resumed.events["type"] == "preempted"]
    assert preempted["signal"].tolist() == ["SIGTERM"] * 3
    assert len(resumed.manifest["attempts"]) == 4
    assert [bool(a.get("preempted")) for a in resumed.manifest["attempts"]] == [True] * 3 + [False]


@pytest.mark.parametrize("moment", ["twice_in_a_row", "during_an_epoch_snapshot"])
def test_repeated_signals_and_a_signal_during_a_snapshot_write_lose_nothing(tmp_path, moment):
    epochs = 4
    extra = (*SCRIPT_OPTIONS, "--ballast", "24")
    run_to_completion(tmp_path / "reference", epochs, "epoch", *extra)
    run_dir = tmp_path / "resumed"
    backup = os.path.join(run_dir, "backup")
    if moment == "twice_in_a_row":
        status, seconds, _, stderr = signal_when_line(
            run_dir, epochs, "epoch", lambda l: l == "BATCH 1 4",
            [signal.SIGINT, signal.SIGINT, signal.SIGTERM], *extra)
        # KeyboardInterrupt, uncaught by the script: Python ends by SIGINT.
        assert status == -signal.SIGINT, stderr[-2000:]
    else:
        # The epoch snapshot (24 MB of ballast) is written in the background
        # while the next epoch trains: signal while its temporary exists.
        status, seconds, _, stderr = signal_when_line(
            run_dir, epochs, "epoch",
            lambda l: l.startswith("BATCH 1 ") and bool(glob.glob(os.path.join(backup, ".snapshot-*"))),
            [signal.SIGTERM], *extra)
        assert status == 143, stderr[-2000:]
    assert seconds < EXIT_BOUND_SECONDS
    run = kcallbacks.load_run(run_dir)
    event = run.events[run.events["type"] == "preempted"].iloc[-1]
    if moment == "twice_in_a_row":
        # The first one acts; the others were noted (two identical signals
        # pending at once are one to the kernel).
        assert event["signal"] == "SIGINT" and event["repeats"] >= 1
    assert not glob.glob(os.path.join(backup, ".snapshot-*"))
    run_to_completion(run_dir, epochs, "epoch", *extra)
    assert_same_run(tmp_path / "reference", run_dir)
