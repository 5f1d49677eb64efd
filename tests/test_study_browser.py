"""The study page (`kreport compare`) in a real headless Chromium, offline:
a real 3-trial keras-tuner search and a synthetic 1,000-run study. The
table is ranked by the objective, the parallel-coordinates chart has a line
per run, and a run's curves come and go with its checkbox."""

import json
import os
import subprocess
import sys

import pytest

from test_report_browser import CHROMIUM, browser, kreport, offline_page  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")

# What the page shows: the table's rows, the parallel coordinates' data and
# whether WebGL drew them, and the traces of each curve chart.
PAGE_STATE = """() => {
  const rows = [...document.querySelectorAll('#runs-table tr[data-rank]')].map(tr => ({
    label: tr.querySelector('.run-label').textContent,
    state: tr.querySelector('.state').textContent,
    objective: tr.querySelector('.objective').textContent.trim(),
    checked: tr.querySelector('.curve-toggle').checked,
  }));
  const parallel = [...document.querySelectorAll('.chart')].find(
    el => el.data && el.data[0] && el.data[0].type === 'parcoords');
  const canvases = parallel ? [...parallel.querySelectorAll('canvas')] : [];
  const curves = [...document.querySelectorAll('#metrics .chart')].map(
    el => (el.data || []).map(t => t.name));
  return {
    rows,
    dimensions: parallel ? parallel.data[0].dimensions.map(d => [d.label, d.values.length]) : null,
    parallel_drawn: canvases.some(c => c.width > 0 && c.height > 0),
    curves,
  };
}"""


@pytest.fixture(scope="module")
def tuner_study(tmp_path_factory):
    """The corpus's keras-tuner search (tests/programs), run for real."""
    run_dir = tmp_path_factory.mktemp("tuner") / "search"
    env = dict(os.environ, KC_FIXED_ORDER="1")
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "programs", "keras_tuner_search.py"), str(run_dir)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(str(run_dir) + ".out.json") as f:
        return run_dir, json.load(f)


def open_study(offline_page, tmp_path, *args):
    page_path = tmp_path / "study.html"
    kreport("compare", *args, "-o", str(page_path))
    offline_page.open(page_path)
    return offline_page.page.evaluate(PAGE_STATE)


def objective_value(text):
    return float(text.split()[0])


def test_a_keras_tuner_search_ranked_as_keras_tuner_ranks_it(
        tuner_study, tmp_path, offline_page, artifacts_dir):
    run_dir, out = tuner_study
    state = open_study(offline_page, tmp_path, str(run_dir / "runs"), "--top", "1")
    # keras-tuner's score of a trial is its best val_accuracy: the same
    # order, the same values.
    scores = out["scores"]
    ranked = sorted(scores, key=lambda trial: -scores[trial])
    assert [r["label"] for r in state["rows"]] == [f"trial_{t}" for t in ranked]
    for row, trial in zip(state["rows"], ranked):
        assert objective_value(row["objective"]) == pytest.approx(scores[trial], abs=5e-5)
        assert row["state"] == "finished"
    # The trial's units and lr, then what the fits recorded that differs
    # (the optimizer's rate, the parameter count), then the objective; one
    # line per trial.
    assert state["dimensions"] == [["units", 3], ["lr", 3], ["learning_rate", 3],
                                   ["params", 3], ["val_accuracy", 3]]
    assert state["parallel_drawn"]
    # --top 1: the best trial's curves only.
    best = state["rows"][0]["label"]
    for names in state["curves"]:
        assert names and all(name.startswith(best + ":") for name in names)

    page = offline_page.page
    page.screenshot(path=str(artifacts_dir / "study-keras-tuner.png"), full_page=True)
    # Switching the third trial on draws its curves in every chart; off
    # takes them away again.
    third = state["rows"][2]["label"]
    page.locator('#runs-table tr[data-rank="2"] .curve-toggle').check()
    after = page.evaluate(PAGE_STATE)
    for names in after["curves"]:
        assert any(n.startswith(third + ":") for n in names)
        assert any(n.startswith(best + ":") for n in names)
    page.locator('#runs-table tr[data-rank="2"] .curve-toggle').uncheck()
    again = page.evaluate(PAGE_STATE)
    assert again["curves"] == state["curves"]
    assert offline_page.errors == []
    assert offline_page.dialogs == []


def test_a_thousand_run_study(tmp_path, offline_page, artifacts_dir):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
    from synthetic_study import make_study

    make_study(str(tmp_path / "sweep"), runs=1000, epochs=30, batch_rows=60, distinct=10)
    state = open_study(offline_page, tmp_path, str(tmp_path / "sweep"))
    rows = state["rows"]
    assert len(rows) == 1000
    values = [objective_value(r["objective"]) for r in rows]
    assert values == sorted(values)  # val_loss: lower first
    assert [r["checked"] for r in rows].count(True) == 10
    # The interrupted and pre-empted runs are listed, marked.
    states = [r["state"] for r in rows]
    assert states.count("interrupted") == len([i for i in range(1000) if i % 97 == 13])
    assert "pre-empted" in states
    assert state["dimensions"][-1] == ["val_loss", 1000]
    assert all(count == 1000 for _, count in state["dimensions"])
    assert state["parallel_drawn"]
    offline_page.page.locator('#runs-table tr[data-rank="999"] .curve-toggle').check()
    after = offline_page.page.evaluate(PAGE_STATE)
    last = rows[999]["label"]
    assert all(any(n.startswith(last + ":") for n in names) for names in after["curves"])
    offline_page.page.screenshot(path=str(artifacts_dir / "study-1000.png"))
    assert offline_page.errors == []
