"""What `kreport serve` costs per update on a long run.

Writes a synthetic run of 1,000 epochs and 1,000,000 per-batch rows (see
synthetic_run.py), then, for each of N rounds, appends one more epoch as a
fit would (a history row, 1,000 per-batch records, a checkpoint event) and
measures, interleaved in one process:

- live: what the server does for a page that is one update behind
  (`LiveRun.update`: reading the new bytes, downsampling, summary, figures,
  changed sections, the answer), CPU seconds, and the JSON it sends;
- re-read: what a server that reads the whole run again would do
  (`load_run`, summary, the report's figures), the baseline.

Also: the first load of the whole run, and a poll that finds nothing new.

Usage: python benchmarks/serve_update.py [--rounds N] [--keep DIR]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_run import make_run  # noqa: E402

from kcallbacks.run_directory import RunDirectory  # noqa: E402
from kcallbacks.run_reader import load_run  # noqa: E402
from kreport import analysis  # noqa: E402
from kreport.build import report_figures  # noqa: E402
from kreport.live import LiveRun, plain_figure  # noqa: E402


def cpu(function):
    started = time.process_time()
    result = function()
    return time.process_time() - started, result


def reread(path):
    run = load_run(path)
    summary = analysis.summarize(run)
    return [plain_figure(figure) for _, _, figure in report_figures(run, summary)]


def append_epoch(run, epoch, dtype, steps_per_epoch=1000):
    run.append_history({"epoch": epoch, "loss": 0.1, "val_loss": 0.2, "accuracy": 0.9,
                        "val_accuracy": 0.8, "learning_rate": 1e-4,
                        "wall_time": time.time(), "epoch_time": 1.0})
    records = np.zeros(steps_per_epoch, dtype)
    records["step"] = np.arange(steps_per_epoch) + epoch * steps_per_epoch
    records["epoch"] = epoch
    records["batch"] = np.arange(steps_per_epoch)
    records["size"] = 32
    records["loss"] = 0.1 + 0.05 * np.random.default_rng(epoch).random(steps_per_epoch)
    records["accuracy"] = 0.9
    run.append_batches(records)
    run.append_event("checkpoint_saved", epoch=epoch, path=f"checkpoints/{epoch}.weights.h5",
                     monitor="val_loss", value=0.2, best=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keep", help="write the run here and keep it")
    args = parser.parse_args()

    workdir = args.keep or tempfile.mkdtemp(prefix="kreport-serve-bench-")
    path = os.path.join(workdir, "run")
    make_run(path, epochs=1000, batch_rows=1_000_000)
    run = RunDirectory(path)
    dtype = run.open_batch_log(["accuracy"])

    live = LiveRun(path, "run", min_interval=0)
    first_cpu, answer = cpu(live.update)
    first_bytes = len(json.dumps(answer))
    at = (answer["generation"], answer["version"])
    idle_cpu, _ = cpu(lambda: live.update(*at))

    live_cpu, live_bytes, reread_cpu = [], [], []
    for round_ in range(args.rounds):
        append_epoch(run, 1000 + round_, dtype)
        seconds, answer = cpu(lambda: live.update(*at))
        at = (answer["generation"], answer["version"])
        live_cpu.append(seconds)
        live_bytes.append(len(json.dumps(answer)))
        reread_cpu.append(cpu(lambda: reread(path))[0])

    def spread(values, scale=1000.0):
        return f"{statistics.median(values) * scale:.1f} ms (min {min(values) * scale:.1f}, max {max(values) * scale:.1f})"

    print(f"run: 1,000 epochs + 1,000,000 batch rows, then {args.rounds} more epochs of 1,000 steps each")
    print(f"first load (all of it):          {first_cpu:.2f} s CPU, {first_bytes / 1e3:.0f} kB sent")
    print(f"poll with nothing new:           {idle_cpu * 1000:.2f} ms CPU")
    print(f"update, one epoch behind (live): {spread(live_cpu)} CPU, "
          f"{statistics.median(live_bytes) / 1e3:.0f} kB sent")
    print(f"re-reading the whole run:        {spread(reread_cpu)} CPU")
    print(f"live / re-read:                  {statistics.median(live_cpu) / statistics.median(reread_cpu):.3f}x")


if __name__ == "__main__":
    main()
