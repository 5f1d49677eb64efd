"""What watching a fit in a notebook costs: the fit's wall time with
`LiveCharts` against the same fit without it, in a real Jupyter kernel.

The fits run in an ipykernel started by nbclient, as a notebook runs them;
nbclient plays the frontend and receives every display update (a browser
would also render them, in its own process). Three configurations,
interleaved in that one kernel (the order rotates every round), after an
untimed one-epoch warm-up of each:

- "kcallbacks": `standard_callbacks` (history, per-batch loss, best
  checkpoints, backup every epoch);
- "live, every 2 s" and "live, every 0.5 s": the same plus `LiveCharts`
  (what `standard_callbacks(..., live=True)` gives), redrawing at most every
  2 s (the default) or 0.5 s.

The workload is the "small" one of fit_overhead.py: an MLP (64-128-10),
batch 32, 300 steps per epoch, with validation. Figures:

- the fit's wall time divided by its epochs, the median steady epoch
  (second on, begin to next begin, the last to the return of `fit`), and
  the kernel process's CPU time (all threads) divided by the epochs, the
  steadier measure of the work added on a shared machine;
- the training thread's time in LiveCharts' hooks: at train begin (the
  display appears, the thread starts), per epoch (it has no epoch hooks:
  Keras' no-op calls), and at train end (the thread stops, the report is
  built and shown);
- the drawing thread's CPU time per redraw (its whole CPU time, idle polls
  included, over the redraws it made), and the bytes sent per redraw and
  for the final report.

Usage: python benchmarks/notebook_live.py [--rounds 7] [--epochs 20]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {"kcallbacks": None, "live, every 2 s": 2.0, "live, every 0.5 s": 0.5}


# --- in the kernel ------------------------------------------------------------
# These run inside the Jupyter kernel, which imports this file; the driver
# below never imports Keras.


def instrument_live_charts(stats):
    """Counts the drawing thread's redraws and polls and adds up its CPU time
    into `stats` (the thread's own CPU clock, read when it ends), from now
    on in this process."""
    from kcallbacks import live_charts

    def on_drawing_thread():
        import threading

        return threading.current_thread().name == live_charts.THREAD_NAME

    def counted(method, key):
        def wrapper(self, *args, **kwargs):
            if on_drawing_thread():
                stats[key] += 1
            return method(self, *args, **kwargs)
        return wrapper

    redraw_until_stopped = live_charts.LiveDisplay._redraw_until_stopped

    def timed_thread(self):
        redraw_until_stopped(self)
        stats["draw_cpu"] += time.thread_time()

    live_charts.LiveView.update = counted(live_charts.LiveView.update, "polls")
    live_charts.LiveView.bundle = counted(live_charts.LiveView.bundle, "redraws")
    live_charts.LiveDisplay._redraw_until_stopped = timed_thread


def timed_live_charts(every, hook_seconds):
    """A LiveCharts whose hooks add their wall time to `hook_seconds`."""
    import kcallbacks

    class TimedLiveCharts(kcallbacks.LiveCharts):
        pass

    for hook in ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end"):
        def timed(self, *args, _method=getattr(kcallbacks.LiveCharts, hook), _hook=hook, **kwargs):
            started = time.perf_counter()
            _method(self, *args, **kwargs)
            hook_seconds[_hook] += time.perf_counter() - started
        setattr(TimedLiveCharts, hook, timed)
    return TimedLiveCharts(every=every)


def measure(rounds, epochs):
    """Runs the interleaved fits; returns a JSON-safe dict of lists per configuration."""
    import shutil
    import tempfile

    import keras
    import numpy as np

    import kcallbacks

    sys.path.insert(0, BENCHMARKS_DIR)
    from models import EpochClock, mlp

    rng = np.random.default_rng(0)
    x = rng.standard_normal((12000, 64), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((64, 10)), axis=1)
    results = {config: {key: [] for key in (
        "per_epoch", "cpu_per_epoch", "steady_epoch", "train_begin", "epoch_hooks", "train_end",
        "draw_cpu", "redraws", "polls")} for config in CONFIGS}
    configs = list(CONFIGS)
    draws = {}
    instrument_live_charts(draws)
    for round_index in range(rounds + 1):  # round 0 warms up, untimed
        order = configs[round_index % len(configs):] + configs[: round_index % len(configs)]
        for config in order:
            fit_epochs = 1 if round_index == 0 else epochs
            directory = tempfile.mkdtemp(prefix="kcallbacks-bench-")
            hooks = dict.fromkeys(("on_train_begin", "on_epoch_begin", "on_epoch_end",
                                   "on_train_end"), 0.0)
            draws.update(draw_cpu=0.0, redraws=0, polls=0)
            callbacks = kcallbacks.standard_callbacks(directory)
            if CONFIGS[config] is not None:
                callbacks.append(timed_live_charts(CONFIGS[config], hooks))
            clock = EpochClock()
            model = mlp((64, 128, 10), optimizer="adam", metrics=["accuracy"],
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            try:
                started, cpu_started = time.perf_counter(), time.process_time()
                model.fit(x, y, batch_size=32, epochs=fit_epochs, verbose=0, shuffle=False,
                          validation_split=0.2, callbacks=callbacks + [clock])
                ended, cpu_ended = time.perf_counter(), time.process_time()
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            if not round_index:
                continue
            ends = clock.starts[1:] + [ended]
            steady = [end - start for start, end in zip(clock.starts[1:], ends[1:])]
            result = results[config]
            result["per_epoch"].append((ended - started) / epochs)
            result["cpu_per_epoch"].append((cpu_ended - cpu_started) / epochs)
            result["steady_epoch"].append(statistics.median(steady))
            result["train_begin"].append(hooks["on_train_begin"])
            result["epoch_hooks"].append((hooks["on_epoch_begin"] + hooks["on_epoch_end"]) / epochs)
            result["train_end"].append(hooks["on_train_end"])
            for key in draws:
                result[key].append(draws[key])
    return {"results": results, "keras": keras.__version__, "backend": keras.backend.backend()}


# --- the driver -----------------------------------------------------------------


def run_in_kernel(rounds, epochs):
    """Runs `measure` in a Jupyter kernel; returns its result and, per
    display message kind, the count and total bytes received."""
    import nbformat
    from nbclient import NotebookClient

    received = {}

    class CountingClient(NotebookClient):
        def process_message(self, msg, cell, cell_index):
            kind = msg["msg_type"]
            transient = msg["content"].get("transient") or {}
            if kind in ("display_data", "update_display_data") and transient.get("display_id"):
                html = msg["content"]["data"].get("text/html", "")
                kind = "report" if html.startswith("<iframe") else kind
                count, size = received.get(kind, (0, 0))
                received[kind] = (count + 1, size + len(html.encode()))
            return super().process_message(msg, cell, cell_index)

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {BENCHMARKS_DIR!r})
        import notebook_live
        print(json.dumps(notebook_live.measure({rounds}, {epochs})))
    """))]
    client = CountingClient(notebook, kernel_name="python3", timeout=None,
                            resources={"metadata": {"path": BENCHMARKS_DIR}})
    client.execute()
    (line,) = [o.text for o in notebook.cells[0].outputs
               if o.output_type == "stream" and o.name == "stdout"]
    return json.loads(line), received


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    started = time.perf_counter()
    measured, received = run_in_kernel(args.rounds, args.epochs)
    results = measured["results"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {measured['keras']} ({measured['backend']}) in a Jupyter kernel; "
          f"{args.epochs} epochs of 300 steps per fit, {args.rounds} interleaved rounds "
          f"(median, and min-max over rounds); {time.perf_counter() - started:.0f} s in all")

    base = results["kcallbacks"]
    print(f"\n  {'configuration':18s} {'fit s/epoch':>11s} {'range':>13s} {'added':>9s} "
          f"{'steady epoch':>12s} {'added':>9s} {'CPU s/epoch':>11s} {'added':>9s}")
    for config, result in results.items():
        per_epoch, steady, cpu = (statistics.median(result[k])
                                  for k in ("per_epoch", "steady_epoch", "cpu_per_epoch"))
        added = per_epoch - statistics.median(base["per_epoch"])
        added_steady = steady - statistics.median(base["steady_epoch"])
        added_cpu = cpu - statistics.median(base["cpu_per_epoch"])
        print(f"  {config:18s} {per_epoch:11.3f} {min(result['per_epoch']):6.3f}-"
              f"{max(result['per_epoch']):<6.3f} {added * 1e3:+7.1f}ms {steady:12.3f} "
              f"{added_steady * 1e3:+7.1f}ms {cpu:11.3f} {added_cpu * 1e3:+7.1f}ms")

    print("\n  LiveCharts on the training thread (median over fits) and its drawing thread:")
    print(f"  {'configuration':18s} {'train begin':>11s} {'per epoch':>10s} {'train end':>10s} "
          f"{'redraws':>8s} {'polls':>6s} {'CPU/redraw':>11s}")
    for config, result in results.items():
        if CONFIGS[config] is None:
            continue
        cpu_per_redraw = [cpu / max(n, 1) for cpu, n in zip(result["draw_cpu"], result["redraws"])]
        print(f"  {config:18s} {statistics.median(result['train_begin']) * 1e3:9.1f}ms "
              f"{statistics.median(result['epoch_hooks']) * 1e6:8.1f}us "
              f"{statistics.median(result['train_end']) * 1e3:8.0f}ms "
              f"{statistics.median(result['redraws']):8.0f} {statistics.median(result['polls']):6.0f} "
              f"{statistics.median(cpu_per_redraw) * 1e3:9.1f}ms")

    print("\n  received by the frontend (nbclient), all fits:")
    for kind, (count, size) in sorted(received.items()):
        print(f"  {kind:20s} {count:5d} messages, {size / max(count, 1) / 1e3:8.1f} kB each")


if __name__ == "__main__":
    main()
