"""How long a BackupAndRestore snapshot holds up a fit with two JAX
processes (jax.distributed, gloo, DataParallel) against one process, for
the same model and global batch.

Each configuration is a real job: this script starts itself as the worker
processes. Every epoch begins with a snapshot of the previous one
(`async_save=False`, so the whole copy and write is on the fit's thread);
the time the snapshot's `on_epoch_begin` takes is measured by callbacks
around `BackupAndRestore`, on process 0 (the writer), from the second epoch
on. Configurations are interleaved, the order rotating each round.

Usage: python benchmarks/jax_multiprocess_snapshot.py [--rounds 3] [--width 1024]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

EPOCHS = 4


def worker(out, process_id, processes, port, width):
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=processes, process_id=process_id)
    import keras
    import numpy as np

    import kcallbacks
    from models import mlp

    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False
    keras.distribution.set_distribution(distribution)
    model = mlp((width, width, width, 10), optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(process_id)
    x = rng.standard_normal((256 // processes, width), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    held = []

    class Clock(keras.callbacks.Callback):
        def __init__(self, start):
            super().__init__()
            self.start = start

        def on_epoch_begin(self, epoch, logs=None):
            if self.start:
                self.began = time.perf_counter()
            elif epoch >= 2:  # epoch 1 begins with the first snapshot: allocations
                held.append(time.perf_counter() - before.began)

    before = Clock(True)
    backup = kcallbacks.BackupAndRestore(os.path.join(out, "backup"), async_save=False)
    model.fit(x, y, batch_size=64 // processes, epochs=EPOCHS, verbose=0, shuffle=False,
              callbacks=[before, backup, Clock(False)])
    if process_id == 0:
        parameters = sum(int(np.prod(v.shape)) for v in model.weights)
        with open(os.path.join(out, "held.json"), "w") as f:
            json.dump({"held": held, "parameters": parameters}, f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(processes, width):
    out = tempfile.mkdtemp(prefix="kcallbacks-bench-jax-")
    port = free_port()
    jobs = [
        subprocess.Popen([sys.executable, __file__, "--worker", out, str(p), str(processes),
                          str(port), str(width)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in range(processes)
    ]
    try:
        for job in jobs:
            if job.wait(timeout=600) != 0:
                raise RuntimeError(f"a worker of the {processes}-process job failed")
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
    with open(os.path.join(out, "held.json")) as f:
        result = json.load(f)
    subprocess.run(["rm", "-rf", out], check=False)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--worker", nargs=5, metavar=("OUT", "PID", "N", "PORT", "WIDTH"))
    args = parser.parse_args()
    if args.worker:
        out, process_id, processes, port, width = args.worker
        worker(out, int(process_id), int(processes), int(port), int(width))
        return
    held = {1: [], 2: []}
    parameters = None
    for round_index in range(args.rounds):
        for processes in ((1, 2) if round_index % 2 == 0 else (2, 1)):
            result = run_job(processes, args.width)
            held[processes] += result["held"]
            parameters = result["parameters"]
    megabytes = parameters * 3 * 4 / 1e6  # weights and Adam's two moments, float32
    print(f"model: {parameters:,} parameters, a {megabytes:.0f} MB snapshot; {os.cpu_count()} cores; "
          f"{args.rounds} rounds x {EPOCHS - 2} snapshots per job")
    one = statistics.median(held[1])
    for processes, times in held.items():
        median = statistics.median(times)
        print(f"{processes} process{'es' if processes > 1 else ''}: snapshot holds the fit "
              f"{median * 1000:.0f} ms (median; {min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms), "
              f"{median / one:.2f}x one process")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
