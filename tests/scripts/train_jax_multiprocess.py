"""One process of a deterministic JAX multi-process data-parallel run with the
kcallbacks suite, for the multi-process tests (issue 14).

Usage: train_jax_multiprocess.py RUN_DIR PROCESS_ID NUM_PROCESSES PORT EPOCHS
           [--save-freq epoch|N] [--suite full|minimal] [--compose P] [--step-sleep S]

Every process gets the same arguments but its own PROCESS_ID, and the same
RUN_DIR. With NUM_PROCESSES > 1 the process joins `jax.distributed` on
127.0.0.1:PORT (CPU, gloo collectives) and trains under
`keras.distribution.DataParallel` over all processes' devices, with
`auto_shard_dataset = False`: it feeds its own shard x[PROCESS_ID::N] with a
local batch of 32 / N, a global batch of 32. With NUM_PROCESSES = 1 (PORT is
then unused) it trains under DataParallel over its one device, without
`jax.distributed`, on the data in its natural order.

--compose P (with NUM_PROCESSES = 1): the independent recomputation of a
P-process run: a plain process (no distribution at all) that fits, with
batch_size 32, on the data reordered so that its batch k is exactly the
P-process run's global batch k. How DataParallel with auto_shard_dataset =
False composes a global batch, checked with 2 processes (each process's local
rows through the JAX trainer's own `_distribute_data`, then
`process_allgather`): `jax.make_array_from_process_local_data` lays the
processes' local batches one after the other in process order (device order:
one CPU device per process), so global batch k = process 0's local batch k,
then process 1's local batch k, ... For shards x[p::P] and a global batch of
32 that is, for rows 32k .. 32k+31: 32k, 32k+P, ... (process 0's 32/P rows),
then 32k+1, 32k+1+P, ... (process 1's), and so on. The validation data is
composed the same way.

--step-sleep S: sleep S seconds after each training step (a slower step,
for a signal that takes a while to act; training itself is unchanged).

Seeded (keras.utils.set_random_seed, the same seed in every process), fixed
data order, no Dropout. Prints `BATCH e b` and `EPOCH_DONE e` lines to time
kills and signals; at the end writes the final weights to
RUN_DIR/../NAME.final.PID.npz and prints TRAINING_DONE.
"""

import argparse
import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("process_id", type=int)
parser.add_argument("num_processes", type=int)
parser.add_argument("port", type=int)
parser.add_argument("epochs", type=int)
parser.add_argument("--save-freq", default="epoch")
parser.add_argument("--suite", choices=["full", "minimal"], default="full")
parser.add_argument("--compose", type=int, default=None, metavar="P",
                    help="a plain single process fitting on a P-process run's global batches")
parser.add_argument("--step-sleep", type=float, default=0.0)
args = parser.parse_args()
if args.compose is not None and args.num_processes != 1:
    sys.exit("--compose needs NUM_PROCESSES = 1")
if not 0 <= args.process_id < args.num_processes or 32 % args.num_processes:
    sys.exit("PROCESS_ID must be in [0, NUM_PROCESSES), and NUM_PROCESSES divide 32")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if args.num_processes > 1:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcallbacks  # noqa: E402
from training import acting_suite, digits_data  # noqa: E402

GLOBAL_BATCH = 32
save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)

if args.compose is None:
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False  # each process feeds its own shard
    keras.distribution.set_distribution(distribution)
keras.utils.set_random_seed(1234)


def shard(a, process, processes):
    return a[process::processes]


def composed(a, processes):
    """`a` in the order a `processes`-process run's global batches see it."""
    local = GLOBAL_BATCH // processes
    shards = [shard(a, p, processes) for p in range(processes)]
    batches = -(-len(shards[0]) // local)
    return np.concatenate([s[k * local:(k + 1) * local] for k in range(batches) for s in shards])


class Announce(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"BATCH {self.epoch} {batch}", flush=True)
        if args.step_sleep:
            time.sleep(args.step_sleep)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        # What this process's ReduceLROnPlateau and EarlyStopping decided
        # (this callback runs after them), for the tests to compare.
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        decisions.append([epoch, rate, bool(self.model.stop_training)])
        print(f"EPOCH_DONE {epoch}", flush=True)


decisions = []


# 288 training samples (9 global batches of 32) and 96 for validation
# (3 global batches): both divide evenly among 1, 2 or 4 processes.
x, y = digits_data(384)
x_val, y_val = x[-96:], y[-96:]
x, y = x[:-96], y[:-96]
if args.compose is not None:
    x, y, x_val, y_val = (composed(a, args.compose) for a in (x, y, x_val, y_val))
else:
    x, y, x_val, y_val = (shard(a, args.process_id, args.num_processes) for a in (x, y, x_val, y_val))
batch_size = GLOBAL_BATCH // args.num_processes

model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(32, activation="relu"),
    keras.layers.Dense(10),
])
model.compile(
    optimizer=keras.optimizers.Adam(0.01),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
run_dir = args.run_dir
callbacks = [kcallbacks.HistoryLogger(run_dir), kcallbacks.BatchLossTracker(run_dir)]
if args.suite == "full":
    callbacks += acting_suite(run_dir)
callbacks.insert(2, kcallbacks.BackupAndRestore(os.path.join(run_dir, "backup"), save_freq=save_freq))
callbacks.append(Announce())

model.fit(
    x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=batch_size,
    shuffle=False, verbose=0, callbacks=callbacks,
)
weights = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
np.savez(f"{os.path.normpath(run_dir)}.final.{args.process_id}.npz", **weights)
with open(f"{os.path.normpath(run_dir)}.decisions.{args.process_id}.json", "w") as f:
    json.dump(decisions, f)
print("TRAINING_DONE", flush=True)
