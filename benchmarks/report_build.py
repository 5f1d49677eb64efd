"""How fast `kreport build` is on a big run, and how big its report.

Writes a synthetic run of 1,000 epochs and 1,000,000 per-batch rows (through
the RunDirectory API, see synthetic_run.py), then times, as real
subprocesses, interleaved and repeated:

- `kreport build RUN -o FILE` against a baseline that only reads the run
  (`load_run` in a fresh interpreter): the ratio is what rendering adds;
- `kreport --help` against a bare `python -c pass`: the ratio is what
  importing the CLI adds to starting Python.

Targets: build at most 3 s, report at most 8 MB, `kreport --help` at most
0.5 s. Exits 1 if one is missed.

Usage: python benchmarks/report_build.py [--repeats N] [--keep DIR]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_run import make_run  # noqa: E402

BIN = os.path.dirname(sys.executable)
KREPORT = os.path.join(BIN, "kreport")
TARGETS = {"build_s": 3.0, "report_mb": 8.0, "help_s": 0.5}


def timed(command):
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", help="write the run and report here and keep them")
    args = parser.parse_args()

    workdir = args.keep or tempfile.mkdtemp(prefix="kreport-bench-")
    run_dir = os.path.join(workdir, "run")
    report = os.path.join(workdir, "report.html")
    if not os.path.exists(os.path.join(run_dir, "run.json")):
        started = time.perf_counter()
        make_run(run_dir, epochs=1000, batch_rows=1_000_000)
        print(f"synthetic run: 1,000 epochs, 1,000,000 batch rows, written in "
              f"{time.perf_counter() - started:.1f} s")

    read_only = [sys.executable, "-c", f"from kcallbacks.run_reader import load_run; load_run({run_dir!r})"]
    build = [KREPORT, "build", run_dir, "-o", report]
    bare = [sys.executable, "-c", "pass"]
    help_ = [KREPORT, "--help"]
    times = {name: [] for name in ("read", "build", "bare", "help")}
    timed(build)  # warm the file cache and bytecode
    for _ in range(args.repeats):
        times["read"].append(timed(read_only))
        times["build"].append(timed(build))
        times["bare"].append(timed(bare))
        times["help"].append(timed(help_))
    median = {name: statistics.median(values) for name, values in times.items()}
    figures = {
        "build_s": median["build"],
        "report_mb": os.path.getsize(report) / 1e6,
        "help_s": median["help"],
    }

    print(f"kreport build:  {median['build']:.2f} s median of {args.repeats} "
          f"({median['build'] / median['read']:.1f}x reading the run alone, {median['read']:.2f} s)")
    print(f"report size:    {figures['report_mb']:.2f} MB")
    print(f"kreport --help: {median['help']:.3f} s median "
          f"({median['help'] / median['bare']:.1f}x a bare python start, {median['bare']:.3f} s)")
    missed = [name for name, target in TARGETS.items() if figures[name] > target]
    for name in missed:
        print(f"MISSED: {name} {figures[name]:.2f} > {TARGETS[name]}")
    if not missed:
        print("all targets met: build <= 3 s, report <= 8 MB, --help <= 0.5 s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
