"""`kreport compare` on a study of many runs, as a user runs it: the time
to the page (wall and CPU, the command as a subprocess), the page's size,
how both grow with the number of runs, and the page's time to first paint
and to its last chart in headless Chromium.

Every run has EPOCHS epochs and a BATCH_ROWS-row per-batch log (which a
study does not read, but which is there, as in a real sweep). The study is
made once under a cache directory (see synthetic_study.py) and reused.

Usage: python benchmarks/study_compare.py [--runs 1000] [--epochs 100]
           [--batch-rows 10000] [--rounds 5] [--cache /tmp/kreport-study-bench]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from synthetic_study import make_study

KREPORT = os.path.join(os.path.dirname(sys.executable), "kreport")


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def timed_compare(paths, output):
    """(wall seconds, CPU seconds of the child) of one `kreport compare`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([KREPORT, "compare", *paths, "-o", output], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def paint_times(page_path):
    """(first contentful paint, every chart drawn) in ms, in Chromium."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto("file://" + os.path.abspath(page_path), wait_until="load")
        page.wait_for_function(
            "[...document.querySelectorAll('.chart')].every("
            "el => el.getAttribute('data-rendered') === 'true')", timeout=120_000)
        drawn = page.evaluate("performance.now()")
        paint = page.evaluate(
            "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime")
        browser.close()
    return paint, drawn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "kreport-study-bench"))
    args = parser.parse_args()

    root = os.path.join(args.cache, f"{args.runs}x{args.epochs}x{args.batch_rows}")
    if not os.path.isdir(root):
        start = time.perf_counter()
        make_study(root + ".partial", args.runs, args.epochs, args.batch_rows)
        os.rename(root + ".partial", root)
        print(f"made the study in {time.perf_counter() - start:.0f} s: {root}")
    runs = sorted(os.path.join(root, name) for name in os.listdir(root))
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d in runs for f in os.listdir(d)
                  if os.path.isfile(os.path.join(d, f)))
    print(f"{len(runs)} runs, {args.epochs} epochs and {args.batch_rows} batch rows each, "
          f"{on_disk / 1e6:.0f} MB on disk")

    sizes = sorted({max(len(runs) // 10, 1), max(len(runs) * 3 // 10, 1), len(runs)})
    output = os.path.join(args.cache, "study.html")
    print(f"{'runs':>6} {'wall s (median, IQR)':>24} {'CPU s (median, IQR)':>24} {'page MB':>8}")
    results = {}
    for _ in range(args.rounds):  # rounds interleave the sizes
        for size in sizes:
            wall, cpu = timed_compare(runs[:size], output)
            results.setdefault(size, []).append((wall, cpu, os.path.getsize(output)))
    for size in sizes:
        walls = [r[0] for r in results[size]]
        cpus = [r[1] for r in results[size]]
        w1, w, w3 = quartiles(walls)
        c1, c, c3 = quartiles(cpus)
        print(f"{size:>6} {w:>9.2f} ({w1:.2f}-{w3:.2f}) {c:>13.2f} ({c1:.2f}-{c3:.2f}) "
              f"{results[size][-1][2] / 1e6:>8.2f}")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        grow = (statistics.median(r[0] for r in results[large])
                - statistics.median(r[0] for r in results[small])) / (large - small)
        per_run = (results[large][-1][2] - results[small][-1][2]) / (large - small)
        print(f"growth: {grow * 1000:.2f} ms and {per_run / 1000:.1f} kB per run "
              f"(plotly.js, 4.8 MB, is in every page)")
    timed_compare(runs, output)
    paints = [paint_times(output) for _ in range(3)]
    paint = statistics.median(p[0] for p in paints)
    drawn = statistics.median(p[1] for p in paints)
    print(f"Chromium, {len(runs)} runs: first contentful paint {paint:.0f} ms, "
          f"every chart drawn {drawn:.0f} ms (medians of 3 loads)")


if __name__ == "__main__":
    main()
