"""Built reports in a real headless Chromium, offline: every chart renders,
nothing is logged as an error, no request leaves the file, run strings stay
text."""

import math
import os
import shutil
import subprocess
import sys

import pytest

from kcallbacks.run_directory import RunDirectory

KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Networking off: anything that tries a connection goes to a dead proxy.
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
]
# Per chart: plotly's traces, the points it computed, and the SVG it drew.
CHART_STATE = """() => [...document.querySelectorAll('.chart')].map(el => ({
    id: el.id,
    rendered: el.getAttribute('data-rendered') === 'true',
    names: (el.data || []).map(t => t.name),
    points: (el.calcdata || []).reduce((n, trace) => n + trace.length, 0),
    drawn_lines: [...el.querySelectorAll('.scatterlayer path.js-line')]
        .filter(p => (p.getAttribute('d') || '').length > 10).length,
    drawn_points: el.querySelectorAll('.scatterlayer path.point').length,
    title: (el.querySelector('.gtitle') || {}).textContent || '',
    legend: (el.querySelector('.legend') || {}).textContent || '',
}))"""

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")


def kreport(*args):
    result = subprocess.run([KREPORT, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class OfflinePage:
    """A page in a fresh offline context that records console errors, page
    errors, dialogs and every request it sees (and lets only file:// ones
    through)."""

    def __init__(self, browser):
        self.context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.requests, self.dialogs = [], [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.context.route("**/*", self._route)

    def _route(self, route):
        self.requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    def open(self, path):
        url = path.resolve().as_uri()
        self.page.goto(url, wait_until="load")
        self.page.wait_for_function(
            "[...document.querySelectorAll('.chart')].every(el => el.getAttribute('data-rendered') === 'true')",
            timeout=20_000,
        )
        return url

    def charts(self):
        return self.page.evaluate(CHART_STATE)

    def close(self):
        self.context.close()


@pytest.fixture
def offline_page(browser):
    page = OfflinePage(browser)
    yield page
    page.close()


def test_report_renders_every_chart_offline(real_run, tmp_path, offline_page, artifacts_dir):
    report = tmp_path / "report.html"
    kreport("build", str(real_run), "-o", str(report))

    url = offline_page.open(report)
    page = offline_page.page
    charts = offline_page.charts()

    # accuracy, loss, the per-batch loss, the learning rate: each drawn.
    assert [c["id"] for c in charts] == ["chart-0", "chart-1", "chart-2", "chart-3"]
    for chart in charts:
        assert chart["rendered"] and chart["points"] > 0, chart
        assert chart["drawn_lines"] + chart["drawn_points"] > 0, chart
    loss = next(c for c in charts if "val_loss" in c["names"])
    assert {"loss", "val_loss", "checkpoint saved", "LR reduced", "early stop", "resumed"} <= set(loss["names"])
    assert loss["drawn_points"] >= 5  # the epochs' markers and the events'
    assert "batch loss" in charts[2]["names"] and "epoch mean" in charts[2]["names"]

    header = page.inner_text("header")
    assert "digits-run" in header and "stopped early at epoch 4, resumed 1 time" in header
    assert "5 of 10" in header

    # Hovering a chart shows plotly's hover label.
    plot_area = page.locator("#chart-1 .nsewdrag").first
    plot_area.scroll_into_view_if_needed()
    box = plot_area.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    hover = page.wait_for_selector("#chart-1 .hoverlayer .legend", timeout=5_000)
    assert "val_loss" in hover.text_content()
    page.evaluate("window.scrollTo(0, 0)")

    page.screenshot(path=str(artifacts_dir / "report.png"), full_page=True)
    assert offline_page.errors == []
    assert offline_page.requests == [url]
    assert offline_page.dialogs == []


def test_run_strings_show_as_text(tmp_path, offline_page, artifacts_dir):
    evil = "<script>alert(1)</script>"
    run = RunDirectory(tmp_path / "run", create=True)
    run.update_manifest(
        name='<img src=x onerror="alert(2)">',
        status="finished",
        callbacks=[{"class": "x.EarlyStopping", "config": {"monitor": evil, "note": evil}}],
        optimizer={"class": evil, "config": {"name": evil}},
        model={"name": evil, "summary": evil},
    )
    for epoch in range(4):
        row = {"epoch": epoch, "loss": 1.0 / (epoch + 1)}
        if epoch >= 2:
            row[evil] = float(epoch)  # also makes a "recorded in 2 of 4 epochs" warning
        run.append_history(row)
    run.append_event("checkpoint_saved", epoch=1, path=evil, monitor="loss", value=0.5, best=True)
    report = tmp_path / "report.html"
    kreport("build", run.path, "-o", str(report))
    assert evil not in report.read_text()

    offline_page.open(report)
    page = offline_page.page
    assert offline_page.dialogs == [] and offline_page.errors == []
    assert page.locator("img").count() == 0
    assert page.inner_text("#run-name") == '<img src=x onerror="alert(2)">'
    body = page.inner_text("body")
    assert f"{evil} was recorded in 2 of 4 epochs only (2–3)" in body
    assert body.count(evil) >= 5  # metric tables, warning, checkpoint, config, model
    # plotly draws the metric's name as the chart's title and y-axis label.
    charts = offline_page.charts()
    assert [c["title"] for c in charts].count(evil) == 1
    assert offline_page.page.locator(".ytitle", has_text=evil).count() == 1
    page.screenshot(path=str(artifacts_dir / "report-escaping.png"), full_page=True)


def test_comparison_renders_offline(real_run, tmp_path, offline_page):
    other = tmp_path / "other-run"
    shutil.copytree(real_run, other)
    RunDirectory(other).update_manifest(optimizer={"class": "SGD", "config": {"learning_rate": 0.1}})
    report = tmp_path / "compare.html"
    kreport("compare", str(real_run), str(other), "-o", str(report))

    url = offline_page.open(report)
    charts = offline_page.charts()
    assert len(charts) == 2
    for chart in charts:
        assert chart["rendered"] and chart["drawn_lines"] >= 4, chart
    assert "digits-run: val_loss" in charts[1]["names"] and "other-run: val_loss" in charts[1]["names"]
    differences = offline_page.page.inner_text("#config-differences")
    assert "optimizer.class" in differences and "SGD" in differences
    assert offline_page.errors == [] and offline_page.requests == [url]


def test_damaged_run_renders_with_gaps_and_warnings(tmp_path, offline_page):
    from run_factory import small_run

    run = small_run(tmp_path / "run")
    run.append_history({"epoch": 5, "loss": math.nan, "val_loss": math.inf, "late": 1.0})
    run.append_history({"epoch": 6, "loss": 0.1, "val_loss": 0.2, "late": 2.0})
    with open(run.file("history.jsonl"), "ab") as f:
        f.write(b'{"epoch": 7, "lo')
    report = tmp_path / "report.html"
    kreport("build", run.path, "-o", str(report))

    offline_page.open(report)
    charts = offline_page.charts()
    assert len(charts) == 5  # accuracy, late, loss, per-batch loss, learning rate
    for chart in charts:
        assert chart["rendered"] and chart["drawn_lines"] + chart["drawn_points"] > 0, chart
    warnings = offline_page.page.inner_text("#warnings")
    assert "loss is NaN or infinite in epochs 5" in warnings
    assert "history.jsonl: ignored a torn last line" in warnings
    assert offline_page.errors == []
