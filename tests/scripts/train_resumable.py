"""A deterministic training run with BackupAndRestore, for kill-and-resume tests.

Usage: train_resumable.py RUN_DIR EPOCHS SAVE_FREQ [--suite minimal|full] [--ballast MB]
       [--dropout unseeded|seeded|none] [--no-batch-losses] [--mirrored]

Runs on the backend KERAS_BACKEND names. Seeded (keras.utils.set_random_seed),
op determinism on with TensorFlow, fixed data order, and a Dropout layer: by
default unseeded, which on PyTorch draws its masks from torch's global
generator, and elsewhere from a seed state among the model's variables;
both must be restored. Prints EPOCH_DONE e and BATCH e b lines to time
kills; at the end writes the final weights to RUN_DIR/../NAME.final.npz and
prints TRAINING_DONE.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcallbacks  # noqa: E402
from training import acting_suite, digits_data  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("epochs", type=int)
parser.add_argument("save_freq")
parser.add_argument("--suite", default="full")
parser.add_argument("--ballast", type=float, default=0.0)
parser.add_argument("--dropout", choices=["unseeded", "seeded", "none"], default="unseeded")
parser.add_argument("--no-batch-losses", action="store_true",
                    help="leave BatchLossTracker out (for a backend it does not support yet)")
parser.add_argument("--mirrored", action="store_true",
                    help="train under MirroredStrategy on two logical CPU devices (TensorFlow)")
args = parser.parse_args()
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    if args.mirrored:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.get_strategy()
    tf.config.experimental.enable_op_determinism()
    scope = strategy.scope
elif args.mirrored:
    sys.exit("--mirrored needs KERAS_BACKEND=tensorflow")
else:
    import contextlib

    scope = contextlib.nullcontext
save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)

keras.utils.set_random_seed(1234)


class Ballast(keras.layers.Layer):
    """Carries a large non-trainable variable, so a snapshot takes long
    enough to write that a kill can land in the middle of it."""

    def __init__(self, megabytes, **kwargs):
        super().__init__(**kwargs)
        self.ballast = self.add_weight(
            shape=(max(1, int(megabytes * 2**18)),), initializer="ones", trainable=False
        )

    def call(self, x):
        return x


class PatienceLikeCounter(keras.callbacks.Callback):
    """A user callback with state: counts epochs whose loss did not improve,
    and puts the count into the logs so the history shows it."""

    def on_train_begin(self, logs=None):
        self.best, self.stale = None, 0

    def on_epoch_end(self, epoch, logs=None):
        if self.best is None or logs["loss"] < self.best - 0.05:
            self.best, self.stale = logs["loss"], 0
        else:
            self.stale += 1
        logs["stale_epochs"] = float(self.stale)

    def get_state(self):
        return {"best": self.best, "stale": self.stale}

    def set_state(self, state):
        self.best, self.stale = state["best"], state["stale"]


class Announce(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"BATCH {self.epoch} {batch}", flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        print(f"EPOCH_DONE {epoch}", flush=True)


x, y = digits_data(384)
x_val, y_val = x[-96:], y[-96:]
x, y = x[:-96], y[:-96]
layers = [keras.Input((64,))]
if args.ballast:
    layers.append(Ballast(args.ballast))
layers.append(keras.layers.Dense(32, activation="relu"))
if args.dropout != "none":
    layers.append(keras.layers.Dropout(0.3, seed=7 if args.dropout == "seeded" else None))
layers.append(keras.layers.Dense(10))
with scope():
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
run_dir = args.run_dir
callbacks = [kcallbacks.HistoryLogger(run_dir)]
if not args.no_batch_losses:
    callbacks.append(kcallbacks.BatchLossTracker(run_dir))
callbacks.append(PatienceLikeCounter())
if args.suite == "full":
    callbacks += acting_suite(run_dir)
# The restore callback sits in the middle on purpose: order must not matter.
callbacks.insert(2, kcallbacks.BackupAndRestore(os.path.join(run_dir, "backup"), save_freq=save_freq))
callbacks.append(Announce())

history = model.fit(
    x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=32,
    shuffle=False, verbose=0, callbacks=callbacks,
)
weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
np.savez(os.path.normpath(run_dir) + ".final.npz", **weights)
# What Keras' own History saw in this process, and the learning rate as
# each replica holds it, for the tests to compare with the run directory.
rate = next(v for v in model.optimizer.variables if v.path.endswith("learning_rate"))
rate = getattr(rate, "value", rate)  # the backend variable: mirrored under a strategy
replicas = getattr(rate, "values", None)  # a tuple for a mirrored variable
replica_rates = [float(keras.ops.convert_to_numpy(v))
                 for v in (replicas if isinstance(replicas, tuple) else [rate])]
with open(os.path.normpath(run_dir) + ".keras_history.json", "w") as f:
    json.dump({"history": history.history, "replica_learning_rates": replica_rates}, f)
print("TRAINING_DONE", flush=True)
