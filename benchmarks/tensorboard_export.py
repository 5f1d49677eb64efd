"""How fast `kreport tensorboard` is on a big run.

Writes a synthetic run of 1,000 epochs and 2,000,000 per-batch rows with
two per-batch metrics, loss and accuracy: 4,000,000 batch scalars (through
the RunDirectory API, see synthetic_run.py), then times
`kreport tensorboard RUN --logdir DIR` as a real subprocess, after one
warm-up run, and prints the median.

For comparison it also times the way kreport wrote events before (one
protobuf Event per scalar, framed by tensorboard's RecordWriter and its
pure-Python CRC32C) on the first 100,000 batch scalars and extrapolates to
the run's scalar count (the whole export took about a minute that way);
`--no-baseline` skips it.

Target: at most 3 s. Exits 1 if missed.

Usage: python benchmarks/tensorboard_export.py [--repeats N] [--keep DIR] [--no-baseline]
"""

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_run import make_run  # noqa: E402

BIN = os.path.dirname(sys.executable)
KREPORT = os.path.join(BIN, "kreport")
EPOCHS, BATCH_ROWS = 1000, 2_000_000
TARGET_S = 3.0
BASELINE_SCALARS = 100_000


def timed(command):
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def per_event_seconds(run_dir, scalars):
    """Seconds the old writer (a protobuf Event per scalar, tensorboard's
    RecordWriter) takes for the run's first `scalars` batch losses."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    from kcallbacks.run_reader import load_run

    batches = load_run(run_dir).batches.head(scalars)
    rows = list(zip(batches["step"].tolist(), batches["loss"].tolist()))
    writer = RecordWriter(io.BytesIO())
    started = time.perf_counter()
    for step, value in rows:
        summary_value = summary_pb2.Summary.Value(
            tag="batch_loss",
            tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(), float_val=[value],
            ),
        )
        event = event_pb2.Event(wall_time=1.7e9, step=step, summary=summary_pb2.Summary(value=[summary_value]))
        writer.write(event.SerializeToString())
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="write the run and event files here and keep them")
    parser.add_argument("--no-baseline", action="store_true", help="skip timing the old per-event writer")
    args = parser.parse_args()

    workdir = args.keep or tempfile.mkdtemp(prefix="kreport-tb-bench-")
    try:
        run_dir = os.path.join(workdir, "run")
        logdir = os.path.join(workdir, "tensorboard")
        if not os.path.exists(os.path.join(run_dir, "run.json")):
            started = time.perf_counter()
            make_run(run_dir, epochs=EPOCHS, batch_rows=BATCH_ROWS)
            print(f"synthetic run: {EPOCHS:,} epochs, {BATCH_ROWS:,} batch rows (loss, accuracy), "
                  f"written in {time.perf_counter() - started:.1f} s")

        export = [KREPORT, "tensorboard", run_dir, "--logdir", logdir]
        timed(export)  # warm the file cache and bytecode
        times = [timed(export) for _ in range(args.repeats)]
        median = statistics.median(times)
        size = sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(logdir) for name in names)
        scalars = 2 * BATCH_ROWS + 5 * EPOCHS  # batch loss and accuracy; 5 history columns
        print(f"kreport tensorboard: {median:.2f} s median of {args.repeats} "
              f"({', '.join(f'{t:.2f}' for t in times)}); {scalars:,} scalars, {size / 1e6:.0f} MB of event files")

        if not args.no_baseline:
            seconds = per_event_seconds(run_dir, BASELINE_SCALARS)
            print(f"old per-event writer: {seconds:.2f} s for {BASELINE_SCALARS:,} scalars, "
                  f"so about {seconds * scalars / BASELINE_SCALARS:.0f} s for the run's events alone")

        if median > TARGET_S:
            print(f"MISSED: {median:.2f} s > {TARGET_S} s")
            return 1
        print(f"target met: at most {TARGET_S:.0f} s")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
