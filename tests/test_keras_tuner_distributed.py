"""keras-tuner's distributed mode, for real: a chief (the oracle's gRPC
server) and two workers as separate processes on 127.0.0.1, all running
tests/scripts/tune_distributed.py with the same keras-tuner project and the
same kcallbacks run directory, as keras-tuner's distributed-tuning guide
has it. Every trial keras-tuner completed must be exactly one run, written
by the one worker that trained it, recording what keras-tuner recorded;
the chief writes no run; no process is refused a run directory."""

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import keras
import pytest

import kcallbacks
from kcallbacks.run_format import WRITER_LOCK

pytest.importorskip("keras_tuner")
pytest.importorskip("grpc")

pytestmark = pytest.mark.all_backends

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "tune_distributed.py")
KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
WORKERS = ("tuner0", "tuner1")
MAX_TRIALS, EPOCHS = 4, 2  # as in the script
# For the whole search: three interpreters importing Keras and its backend
# on a shared machine, then four 2-epoch trials.
SEARCH_TIMEOUT = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_distributed_search_makes_one_run_per_trial_written_by_its_worker(tmp_path):
    shared = tmp_path / "shared"
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(free_port()))
    logs = {name: tmp_path / f"{name}.log" for name in ("chief", *WORKERS)}
    processes = {}

    def outputs():
        return "\n".join(f"--- {name} (exit {processes[name].returncode}):\n"
                         f"{logs[name].read_text()[-3000:]}" for name in processes)

    try:
        for name in ("chief", *WORKERS):
            with open(logs[name], "w") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, SCRIPT, str(shared), str(len(WORKERS))],
                    env=dict(env, KERASTUNER_TUNER_ID=name),
                    stdout=log, stderr=subprocess.STDOUT,
                )
        chief = processes["chief"]
        deadline = time.monotonic() + SEARCH_TIMEOUT
        while any(processes[w].poll() is None for w in WORKERS):
            # A worker failed would leave the other waiting at the barrier. The
            # chief may end by itself (exit 0) once the workers are told to
            # stop, while one is still shutting down; a chief that failed
            # would leave them waiting for it.
            failed = [w for w in WORKERS if processes[w].poll() not in (None, 0)]
            if failed or chief.poll() not in (None, 0) or time.monotonic() > deadline:
                pytest.fail(f"the search did not end within {SEARCH_TIMEOUT} s with the "
                            f"chief serving and the workers succeeding:\n{outputs()}")
            time.sleep(0.2)
        # The chief leaves its server loop up to 20 s after the last worker
        # is told to stop (keras-tuner's oracle_chief.start_server); stop it
        # unless it has ended already.
        try:
            chief.wait(timeout=2)
        except subprocess.TimeoutExpired:
            chief.terminate()
            chief.wait(timeout=30)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    report = outputs()
    for worker in WORKERS:
        assert processes[worker].returncode == 0, report
        assert f"SEARCH_DONE {worker}" in logs[worker].read_text(), report
    for log in logs.values():
        assert "RunDirectoryLockedError" not in log.read_text(), report

    # What keras-tuner recorded: the chief's oracle writes every trial's
    # JSON into the shared project. keras-tuner catches a trial's exception
    # (a refused run directory included) into the trial's message.
    trials = {}
    for path in glob.glob(str(shared / "tuner" / "digits" / "trial_*" / "trial.json")):
        with open(path) as f:
            trial = json.load(f)
        trials[trial["trial_id"]] = trial
    assert len(trials) == MAX_TRIALS, report
    for trial in trials.values():
        assert (trial["status"], trial["message"]) == ("COMPLETED", None), trial

    # Which worker process trained which trial, as they printed it: each
    # trial once (no retry, no trial trained twice), spread over both.
    announced = [line.split()[1:] for name in WORKERS
                 for line in logs[name].read_text().splitlines() if line.startswith("TRIAL ")]
    trained_by = {trial_id: (worker, int(pid)) for trial_id, worker, pid in announced}
    assert len(announced) == len(trained_by) and set(trained_by) == set(trials), report
    assert {worker for worker, _ in trained_by.values()} == set(WORKERS), report
    for trial_id, (worker, pid) in trained_by.items():
        assert pid == processes[worker].pid

    runs = shared / "runs"
    # One run per trial and nothing else: the chief, which trains nothing,
    # wrote no run of its own, and nothing was written outside a trial's.
    assert sorted(os.listdir(runs)) == sorted(f"trial_{t}" for t in trials)
    for trial_id, trial in trials.items():
        run_dir = runs / f"trial_{trial_id}"
        run = kcallbacks.load_run(run_dir)
        manifest = run.manifest
        assert manifest["trial"] == {
            "id": trial_id, "hyperparameters": trial["hyperparameters"]["values"],
            "tuner": "AnnouncedRandomSearch", "execution": 0,
        }
        assert manifest["status"] == "finished"
        assert len(manifest["attempts"]) == 1, manifest["attempts"]
        assert manifest["environment"]["backend"] == keras.backend.backend()
        assert run.history["epoch"].tolist() == list(range(EPOCHS))
        # keras-tuner's score for objective val_loss is the best epoch's.
        val_loss = run.history["val_loss"].tolist()
        assert trial["best_step"] == val_loss.index(min(val_loss))
        assert trial["score"] == pytest.approx(min(val_loss), rel=1e-6, abs=1e-7)
        observed = trial["metrics"]["metrics"]["val_loss"]["observations"]
        assert [o["step"] for o in observed] == [trial["best_step"]]
        # Every lock of the run (the run's, the backup's) was taken by the
        # worker that trained the trial, and only by it.
        worker_pid = trained_by[trial_id][1]
        locks = glob.glob(str(run_dir / "**" / WRITER_LOCK), recursive=True)
        assert {os.path.relpath(lock, run_dir) for lock in locks} >= {
            WRITER_LOCK, os.path.join("backup", WRITER_LOCK)}, locks
        for lock in locks:
            with open(lock) as f:
                assert json.load(f)["pid"] == worker_pid, lock
    assert not re.search(rf'"pid": {processes["chief"].pid}\b', "".join(
        open(lock).read() for lock in glob.glob(str(shared / "**" / WRITER_LOCK), recursive=True)))

    # The study of the whole search: every trial, ranked as keras-tuner
    # scores them (val_loss, lower first), with its hyperparameters.
    page = tmp_path / "study.html"
    compared = subprocess.run([KREPORT, "compare", str(runs), "-o", str(page)],
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    labels = re.findall(r'<td class="run-label">(.*?)</td>', page.read_text())
    assert labels == [f"trial_{t}" for t in sorted(trials, key=lambda t: trials[t]["score"])]
    assert re.findall(r'<th class="hparam">(.*?)</th>', page.read_text())[:2] == ["units", "learning_rate"]

    some_trial = runs / f"trial_{sorted(trials)[0]}"
    built = subprocess.run([KREPORT, "build", str(some_trial), "-o", str(tmp_path / "report.html")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
