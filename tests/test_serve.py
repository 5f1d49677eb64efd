"""`kreport serve` as a user runs it: a real server process, a real training
subprocess writing the run, a real headless Chromium watching the page, and
raw HTTP requests trying to leave the run directories."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from kcallbacks.run_directory import RunDirectory
from test_report_browser import CHROMIUM, CHROMIUM_FLAGS

KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


class Server:
    """`kreport serve ARGS --port 0` in a subprocess; stopped with SIGINT."""

    def __init__(self, *args):
        self.process = subprocess.Popen(
            [KREPORT, "serve", *args, "--port", "0"],
            stderr=subprocess.PIPE, text=True,
        )
        self.lines = []
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"at (http://[^/]+)/", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise AssertionError(f"kreport serve did not start: {self.lines}")
        self.host, self.port = self.url[len("http://"):].rsplit(":", 1)
        self._drain = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self._drain.start()

    def get(self, raw_path, method="GET", host=None):
        """(status, body) of a request with `raw_path` sent exactly as
        written (and `host` as its Host header, if given)."""
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        connection.putrequest(method, raw_path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        self.last_headers = dict(response.getheaders())
        connection.close()
        return response.status, body

    def stop(self):
        """Ctrl-C: the server must end cleanly, promptly, with exit 0."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=10)
        self._drain.join(timeout=5)
        return code


@pytest.fixture
def serve():
    servers = []

    def start(*args):
        servers.append(Server(*args))
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()


def write_run(path, epochs, batches_per_epoch=10):
    run = RunDirectory(path, create=True)
    run.update_manifest(status="finished", fit_params={"epochs": epochs})
    dtype = run.open_batch_log()
    for epoch in range(epochs):
        run.append_history({"epoch": epoch, "loss": 1.0 / (epoch + 1), "val_loss": 1.5 / (epoch + 1)})
        records = np.zeros(batches_per_epoch, dtype)
        records["step"] = np.arange(batches_per_epoch) + epoch * batches_per_epoch
        records["epoch"] = epoch
        records["size"] = 32
        records["loss"] = 1.0 / (epoch + 1)
        run.append_batches(records)
    return run


# --- the live page, in a browser ------------------------------------------------

PAGE_STATE = """() => {
    const loss = document.querySelector('[data-chart="metric:loss"]');
    const batches = document.querySelector('[data-chart="batch-loss"]');
    const row = [...document.querySelectorAll('#final-metrics tr')]
        .find(tr => tr.cells[0] && tr.cells[0].textContent === 'loss');
    const epochs = [...document.querySelectorAll('#run-facts tr')]
        .find(tr => tr.cells[0].textContent === 'epochs');
    return {
        epochs: epochs ? parseInt(epochs.cells[1].textContent) : null,
        final_loss: row ? row.cells[1].textContent : null,
        loss_points: loss && loss.data ? loss.data[0].x.length : 0,
        batch_points: batches && batches.data ? batches.data[0].x.length : 0,
        x_range: loss && loss.layout.xaxis.range ? loss.layout.xaxis.range.slice() : null,
        x_autorange: loss ? loss.layout.xaxis.autorange : null,
        marker: window.kreportTestMarker || null,
        updates: parseInt(document.body.getAttribute('data-updates') || '0'),
        checkpoints: document.querySelectorAll('[data-section="checkpoints"] tr').length,
    };
}"""


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # The report tests' flags, except that the local server is reached
        # directly; everything else still goes to the dead proxy.
        flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--proxy-bypass-list")]
        flags.append("--proxy-bypass-list=127.0.0.1")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        yield browser
        browser.close()


def open_page(browser, url):
    """A page that may reach the local server and nothing else; its console
    errors and every request it made are recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors, page.requests = [], []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))

    origin = re.match(r"http://[^/]+/", url).group(0)

    def route(request_route):
        page.requests.append(request_route.request.url)
        if request_route.request.url.startswith(origin):
            request_route.continue_()
        else:
            request_route.abort()

    context.route("**/*", route)
    page.goto(url, wait_until="load")
    return page


def test_the_page_follows_a_training_run_without_reloading(serve, browser, tmp_path):
    run_dir = tmp_path / "live"
    # The server starts before the run directory exists, as when a user
    # starts watching and then launches training.
    server = serve(str(run_dir))
    assert "not a run directory yet" in "".join(server.lines)
    trainer = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "train_paced.py"), str(run_dir), "12", "1.5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    written = {}  # epoch -> when the trainer said it was written

    def read_trainer():
        for line in trainer.stdout:
            if line.startswith("EPOCH_DONE"):
                written[int(line.split()[1])] = time.monotonic()

    threading.Thread(target=read_trainer, daemon=True).start()
    try:
        page = open_page(browser, f"{server.url}/runs/live/")
        page.evaluate("() => { window.kreportTestMarker = 'same page'; }")
        page.wait_for_function(f"({PAGE_STATE})().epochs >= 2", timeout=120_000)
        before = page.evaluate(PAGE_STATE)
        assert before["loss_points"] == before["epochs"]
        assert before["batch_points"] > 0 and before["checkpoints"] > 1
        # Zoom the loss chart as a user would (a drag sets a fixed range).
        page.evaluate(
            """() => Plotly.relayout(document.querySelector('[data-chart="metric:loss"]'),
                                     {'xaxis.range': [0, 1.5]})"""
        )
        # From the moment the trainer says an epoch is written to the moment
        # the open page shows it, for the next three epochs.
        latencies = []
        for epoch in range(before["epochs"], before["epochs"] + 3):
            while epoch not in written:
                page.wait_for_timeout(20)  # (keeps the page's requests flowing)
            page.wait_for_function(f"({PAGE_STATE})().epochs >= {epoch + 1}", timeout=30_000, polling=20)
            latencies.append(time.monotonic() - written[epoch])
        after = page.evaluate(PAGE_STATE)
        assert after["marker"] == "same page"  # no reload
        assert after["x_range"] == [0, 1.5] and after["x_autorange"] is False  # the zoom survived
        assert after["loss_points"] == after["epochs"] > before["loss_points"]
        assert after["batch_points"] > before["batch_points"]
        assert after["final_loss"] != before["final_loss"]
        # The issue asks for 2 s; a page polls every second and the server
        # reads every half second. The median spares a loaded CI machine's
        # one slow moment.
        print(f"epoch written -> shown on the page: {[round(t, 2) for t in latencies]} s")
        assert sorted(latencies)[1] < 2.0, latencies
        trainer.wait(timeout=120)
        assert trainer.returncode == 0
        page.wait_for_function(
            """() => document.querySelector('#run-status') &&
                     document.querySelector('#run-status').textContent.includes('finished')""",
            timeout=10_000,
        )
        final = page.evaluate(PAGE_STATE)
        assert final["epochs"] == final["loss_points"] == 12
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        assert float(final["final_loss"]) == pytest.approx(history[-1]["loss"], rel=1e-4)
        assert page.errors == []
        assert all(url.startswith(server.url) for url in page.requests)  # offline: plotly.js from the server
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert server.stop() == 0
    assert "kreport: stopped" in "".join(server.lines)


def test_a_resumed_run_is_redrawn_on_the_open_page(serve, browser, tmp_path):
    run = write_run(tmp_path / "resumed", epochs=6)
    server = serve(str(run.path))
    page = open_page(browser, f"{server.url}/runs/resumed/")
    page.evaluate("() => { window.kreportTestMarker = 'same page'; }")
    page.wait_for_function(f"({PAGE_STATE})().loss_points == 6", timeout=20_000)
    # What a resume from the snapshot of epoch 3 does to the logs, then two
    # more epochs trained with other values.
    run.truncate_history(3)
    run.truncate_batches(30)
    run.append_event("history_truncated", from_epoch=3)
    for epoch in (3, 4):
        run.append_history({"epoch": epoch, "loss": 5.0, "val_loss": 6.0})
    page.wait_for_function(
        """() => { const el = document.querySelector('[data-chart="metric:loss"]');
                   return el.data[0].x.length == 5 && el.data[0].y[4] == 5; }""",
        timeout=20_000,
    )
    state = page.evaluate(PAGE_STATE)
    assert state["marker"] == "same page" and state["epochs"] == 5
    assert page.evaluate(
        """() => document.querySelector('[data-chart="metric:loss"]').data[0].x"""
    ) == [0, 1, 2, 3, 4]
    assert server.stop() == 0


def test_the_overview_shows_every_run_and_updates(serve, browser, tmp_path):
    write_run(tmp_path / "a" / "run", epochs=3)
    second = write_run(tmp_path / "b" / "run", epochs=2)
    server = serve(str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"))
    page = open_page(browser, f"{server.url}/")
    rows = """() => [...document.querySelectorAll('#runs tr[data-run]')].map(tr => [
        tr.getAttribute('data-run'), tr.cells[2].textContent.trim()])"""
    page.wait_for_function(f"({rows})().length == 2")
    # Same directory name twice: the second gets a distinct name.
    assert page.evaluate(rows) == [["run", "3 of 3"], ["run-2", "2 of 2"]]
    second.append_history({"epoch": 2, "loss": 0.2})
    page.wait_for_function(f"({rows})()[1][1] == '3 of 2'", timeout=10_000)
    for key, epochs in (("run", 3), ("run-2", 3)):
        run_page = open_page(browser, f"{server.url}/runs/{key}/")
        run_page.wait_for_function(f"({PAGE_STATE})().loss_points == {epochs}", timeout=10_000)
        assert run_page.errors == []
    assert server.stop() == 0


def test_a_sweep_directory_ranked_by_its_objective_as_runs_appear(serve, browser, tmp_path):
    """`kreport serve runs/`: the runs under it, ranked by the objective with
    a column per hyperparameter; a run the sweep starts later appears in its
    place without a reload."""
    def sweep_run(name, lr, scale):
        run = write_run(tmp_path / "runs" / name, epochs=3)
        run.update_manifest(hparams={"lr": lr, "batch_size": 32},
                            hparams_automatic=["batch_size"])
        run.append_history({"epoch": 3, "loss": 0.1, "val_loss": scale})
        return run

    sweep_run("lr-0.1", 0.1, 0.4)
    sweep_run("lr-0.01", 0.01, 0.3)
    server = serve(str(tmp_path / "runs"))
    assert "showing the runs under it as they appear" in "".join(server.lines)
    page = open_page(browser, f"{server.url}/")
    rows = """() => [...document.querySelectorAll('#runs tr[data-run]')].map(tr => [
        tr.getAttribute('data-run'), tr.querySelector('.objective').textContent.trim(),
        tr.querySelector('.hparam').textContent])"""
    page.wait_for_function(f"({rows})().length == 2")
    assert page.evaluate(rows) == [["lr-0.01", "0.3 (3)", "0.01"], ["lr-0.1", "0.4 (3)", "0.1"]]
    header = page.inner_text("#ranking")
    assert "Ranked by val_loss, lower is better" in header and "batch_size = 32" in header
    # The sweep starts a third run, better than both: it comes in first.
    (tmp_path / "runs" / "later").mkdir()
    sweep_run("later/lr-0.05", 0.05, 0.2)
    page.wait_for_function(f"({rows})().length == 3", timeout=15_000)
    assert page.evaluate(rows)[0] == ["later-lr-0.05", "0.2 (3)", "0.05"]
    assert page.errors == []
    assert server.stop() == 0


# --- what the server gives out, and what it refuses ------------------------------


def test_paths_that_leave_a_run_directory_get_404(serve, tmp_path):
    run = write_run(tmp_path / "runs" / "safe", epochs=1)
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "runs" / "other").mkdir()
    (tmp_path / "runs" / "other" / "run.json").write_text("{}")
    os.symlink(tmp_path / "secret.txt", os.path.join(run.path, "leak.txt"))
    os.symlink(tmp_path, os.path.join(run.path, "up"))
    os.symlink(os.path.join(run.path, "run.json"), os.path.join(run.path, "inside.json"))
    server = serve(run.path)

    status, body = server.get("/runs/safe/files/run.json")
    assert status == 200 and json.loads(body)["status"] == "finished"
    # A run's file never runs as the server's page.
    assert server.last_headers["Content-Security-Policy"] == "sandbox"
    # A page on another domain that resolves to 127.0.0.1 (DNS rebinding).
    for host in ("attacker.example:" + server.port, "127.0.0.1.attacker.example"):
        assert server.get("/runs/safe/files/run.json", host=host)[0] == 400
        assert server.get("/api/overview", host=host)[0] == 400
    for host in ("localhost:" + server.port, "[::1]:" + server.port):
        assert server.get("/runs/safe/files/run.json", host=host)[0] == 200
    status, body = server.get("/runs/safe/files/inside.json")  # a symlink that stays inside
    assert status == 200 and json.loads(body)["status"] == "finished"
    escapes = [
        "/runs/safe/files/../../secret.txt",
        "/runs/safe/files/..%2F..%2Fsecret.txt",
        "/runs/safe/files/%2e%2e/%2e%2e/secret.txt",
        "/runs/safe/files/..%5C..%5Csecret.txt",
        "/runs/safe/files//etc/passwd",
        "/runs/safe/files/%2Fetc%2Fpasswd",
        "/runs/safe/files/leak.txt",
        "/runs/safe/files/up/secret.txt",
        "/runs/safe/files/up/runs/other/run.json",
        "/runs/safe/files/checkpoints",  # a directory, not a file
        "/runs/safe/../other/files/run.json",
        "/runs/other/files/run.json",  # not a named run
        "/runs/..%2Fother/files/run.json",
        "/etc/passwd",
        "/assets/../run.json",
    ]
    for path in escapes:
        status, body = server.get(path)
        assert status == 404, path
        assert b"secret" not in body and b"root:" not in body
    # Nothing changes anything.
    assert server.get("/runs/safe/files/run.json", method="POST")[0] == 405
    assert server.get("/runs/safe/files/run.json", method="DELETE")[0] == 405
    assert os.path.exists(os.path.join(run.path, "run.json"))
    assert server.stop() == 0


def test_command_line_errors_and_warnings(serve, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    result = subprocess.run([KREPORT, "serve", str(afile)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kreport: error: {afile}: not a directory"
    result = subprocess.run([KREPORT, "serve"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Missing argument" in result.stderr
    # A path that cannot be read does not keep the others from being shown.
    write_run(tmp_path / "run", epochs=1)
    (tmp_path / "afile").write_text("x")
    both = serve(str(tmp_path / "run"), str(tmp_path / "afile" / "run"))
    status, body = both.get("/api/overview")
    assert status == 200 and "cannot read" not in body.decode() and "1 of 1" in body.decode()
    assert both.get("/api/runs/run-2/updates")[0] == 200
    # Another machine could read the runs: say so.
    server = serve(str(tmp_path / "run"), "--host", "0.0.0.0")
    assert "anyone who can reach this machine can read these runs" in "".join(server.lines)
    assert server.stop() == 0
    # A port that is taken is a one-line error.
    first = serve(str(tmp_path / "run"))
    result = subprocess.run(
        [KREPORT, "serve", str(tmp_path / "run"), "--port", first.port],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and result.stderr.startswith("kreport: error: cannot listen on")
    assert len(result.stderr.strip().splitlines()) == 1
    assert first.stop() == 0
