"""Pre-emption: SIGTERM and SIGINT stop a fit at the next step with a
snapshot. In-process tests of the handlers' life cycle and endings (the
signals are real, sent to this process); tests/test_preemption_resume.py
signals real training subprocesses and resumes them."""

import os
import signal
import threading

import keras
import numpy as np
import pytest

import kcallbacks
from kcallbacks import snapshots
from training import Interrupted, InterruptAt, digits_data, digits_model

pytestmark = pytest.mark.all_backends


class SignalAt(keras.callbacks.Callback):
    """Sends `sig` to this process at the end of batch `batch` of epoch
    `epoch` (`times` times in a row), and counts the steps trained."""

    def __init__(self, sig, epoch, batch, times=1):
        super().__init__()
        self.sig, self.epoch, self.batch, self.times = sig, epoch, batch, times
        self.steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if (self._epoch, batch) == (self.epoch, self.batch):
            for _ in range(self.times):
                os.kill(os.getpid(), self.sig)


def fit(model, callbacks, epochs=3):
    x, y = digits_data(128)  # 4 batches of 32 an epoch
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def test_sigterm_saves_the_step_and_exits_143_with_the_users_handler_run_and_restored(tmp_path):
    calls = []

    def users_handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, users_handler)
    try:
        signaller = SignalAt(signal.SIGTERM, epoch=1, batch=1, times=2)
        with pytest.raises(SystemExit) as exited:
            fit(digits_model(), [kcallbacks.HistoryLogger(tmp_path / "run"),
                                 kcallbacks.BackupAndRestore(tmp_path / "backup"), signaller])
        assert exited.value.code == 143
        assert calls == [signal.SIGTERM]  # after the snapshot, once
        assert signal.getsignal(signal.SIGTERM) is users_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Stopped before epoch 1's third step: 4 + 2 steps trained.
    assert signaller.steps == 6
    (_, path), = snapshots.list_snapshots(tmp_path / "backup")
    state, _ = snapshots.read_snapshot(path)
    assert (state["epoch"], state["batch"], state["finished"]) == (1, 2, False)
    run = kcallbacks.load_run(tmp_path / "run")
    preempted = run.events[run.events["type"] == "preempted"]
    assert preempted[["signal", "epoch", "batch", "step", "repeats"]].values.tolist() == [
        ["SIGTERM", 1, 2, 6, 1]]
    assert run.manifest["status"] == "preempted"
    assert run.manifest["attempts"][-1]["preempted"]["step"] == 6

    # The next fit continues at that step and trains each step once.
    counter = SignalAt(signal.SIGTERM, epoch=-1, batch=-1)
    model = fit(digits_model(), [kcallbacks.HistoryLogger(tmp_path / "run"),
                                 kcallbacks.BackupAndRestore(tmp_path / "backup"), counter])
    # 6 steps trained; the hooks also fire for the 2 steps of epoch 1
    # passed over without training.
    assert counter.steps == 3 * 4 - 6 + 2
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 12
    assert kcallbacks.load_run(tmp_path / "run").manifest["status"] == "finished"


def test_sigint_raises_keyboard_interrupt_and_fit_again_continues(tmp_path):
    model = digits_model()
    backup = kcallbacks.BackupAndRestore(tmp_path / "backup", preemption_exit_code=3)
    signaller = SignalAt(signal.SIGINT, epoch=0, batch=2)
    with pytest.raises(KeyboardInterrupt, match="saved at epoch 0, batch 3"):
        fit(model, [backup, signaller])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signaller.epoch = -1  # the notebook user runs the cell again
    fit(model, [backup, signaller])
    assert signaller.steps == 3 + (12 - 3) + 3  # + the 3 passed over
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 12
    uninterrupted = fit(digits_model(), [])
    for ours, theirs in zip(model.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_a_signal_in_the_last_step_ends_the_complete_fit_then_takes_effect(tmp_path):
    ended = []

    class Ends(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            ended.append(True)

    with pytest.raises(SystemExit) as exited:
        fit(digits_model(), [kcallbacks.BackupAndRestore(tmp_path / "backup", preemption_exit_code=0),
                             SignalAt(signal.SIGTERM, epoch=2, batch=3), Ends()])
    assert exited.value.code == 0
    assert ended == [True]  # the callbacks after it ended the fit as Keras would
    (_, path), = snapshots.list_snapshots(tmp_path / "backup")
    assert snapshots.read_snapshot(path)[0]["finished"] is True


@pytest.mark.parametrize("then", ["a_signal", "the_next_fit"])
def test_no_handler_outlives_a_fit_that_failed(tmp_path, then):
    backup = kcallbacks.BackupAndRestore(tmp_path / "backup")
    with pytest.raises(Interrupted):
        fit(digits_model(), [backup, InterruptAt(epoch=1)])
    if then == "a_signal":
        # on_train_end never ran; a Ctrl-C now is a plain KeyboardInterrupt.
        with pytest.raises(KeyboardInterrupt) as interrupted:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        assert "saved" not in str(interrupted.value)
    else:
        # The next fit (the same callback, as in a notebook) stops on a
        # Ctrl-C itself, and then leaves Python's own handler.
        with pytest.raises(KeyboardInterrupt, match="saved at epoch 1, batch 2"):
            fit(digits_model(), [backup, SignalAt(signal.SIGINT, epoch=1, batch=1)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_nothing_is_installed_and_it_says_so(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    seen, caught = [], []

    class Look(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(signal.getsignal(signal.SIGTERM))

    def run():
        try:
            with pytest.warns(UserWarning, match="off the main thread"):
                fit(digits_model(), [kcallbacks.BackupAndRestore(tmp_path / "backup"), Look()], epochs=1)
        except BaseException as error:  # handed to the test's thread
            caught.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not caught, caught
    assert seen and all(handler is before for handler in seen)


def test_signals_can_be_named_or_turned_off(tmp_path):
    backup = kcallbacks.BackupAndRestore(tmp_path / "b", preemption_signals=["usr1", signal.SIGTERM])
    assert backup.preemption_signals == (signal.SIGUSR1, signal.SIGTERM)
    assert kcallbacks.BackupAndRestore(tmp_path / "b", preemption_signals=None).preemption_signals == ()
    with pytest.raises(ValueError, match="preemption_signals has 'SIGNOPE', which is not a signal"):
        kcallbacks.BackupAndRestore(tmp_path / "b", preemption_signals=["SIGNOPE"])
    with pytest.raises(ValueError, match="SIGKILL, which cannot be caught"):
        kcallbacks.BackupAndRestore(tmp_path / "b", preemption_signals=[signal.SIGKILL])
    with pytest.raises(ValueError, match="preemption_exit_code must be None or an exit status"):
        kcallbacks.BackupAndRestore(tmp_path / "b", preemption_exit_code=300)

    # Turned off, a signal does what it did before.
    with pytest.raises(KeyboardInterrupt) as interrupted:
        fit(digits_model(), [kcallbacks.BackupAndRestore(tmp_path / "off", preemption_signals=()),
                             SignalAt(signal.SIGINT, epoch=0, batch=1)])
    assert "saved" not in str(interrupted.value)


def test_kreport_shows_when_and_where_each_attempt_was_preempted(tmp_path):
    import json
    import subprocess
    import sys

    kreport = os.path.join(os.path.dirname(sys.executable), "kreport")
    run_dir = tmp_path / "run"

    def callbacks(signaller):
        return [kcallbacks.HistoryLogger(run_dir), kcallbacks.BackupAndRestore(tmp_path / "backup"),
                signaller]

    with pytest.raises(SystemExit):
        fit(digits_model(), callbacks(SignalAt(signal.SIGTERM, epoch=0, batch=1)))
    preempted = json.loads(subprocess.run([kreport, "summary", "--json", str(run_dir)],
                                          capture_output=True, text=True, check=True).stdout)
    assert preempted["status"] == "preempted"
    assert preempted["status_label"] == "pre-empted by SIGTERM at epoch 0, batch 2 (step 2)"
    assert [(p["signal"], p["epoch"], p["batch"], p["step"]) for p in preempted["preemptions"]] == [
        ("SIGTERM", 0, 2, 2)]

    with pytest.raises(KeyboardInterrupt):
        fit(digits_model(), callbacks(SignalAt(signal.SIGINT, epoch=1, batch=2)))
    fit(digits_model(), callbacks(SignalAt(signal.SIGINT, epoch=-1, batch=-1)))
    summary = json.loads(subprocess.run([kreport, "summary", "--json", str(run_dir)],
                                        capture_output=True, text=True, check=True).stdout)
    assert summary["status"] == "finished" and summary["resumes"] == 2
    assert [(p["signal"], p["epoch"], p["batch"]) for p in summary["preemptions"]] == [
        ("SIGTERM", 0, 2), ("SIGINT", 1, 3)]
    text = subprocess.run([kreport, "summary", str(run_dir)], capture_output=True, text=True,
                          check=True).stdout
    assert "pre-empted by SIGINT at epoch 1, batch 3 (step 7)" in text

    report = tmp_path / "report.html"
    subprocess.run([kreport, "build", str(run_dir), "-o", str(report)], check=True,
                   capture_output=True)
    html = report.read_text(encoding="utf-8")
    row = html[html.index('id="preemptions"'):].split("</td>")[0]
    assert "pre-empted by SIGTERM at epoch 0, batch 2 (step 2)" in row
    assert "pre-empted by SIGINT at epoch 1, batch 3 (step 7)" in row
    assert '"pre-empted"' in html  # the chart's marker trace
