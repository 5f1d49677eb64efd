"""Trains the digits model with the kcallbacks suite as one task of a
multi-worker job described by TF_CONFIG, or with --multi-worker under
MultiWorkerMirroredStrategy. Usage: train_as_task.py RUN_DIR EPOCHS [--multi-worker]"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import kcallbacks  # noqa: E402
from training import digits_data  # noqa: E402

run_dir, epochs = sys.argv[1], int(sys.argv[2])
if "--multi-worker" in sys.argv:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

x, y = digits_data(256)
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(
    x, y, validation_split=0.25, epochs=epochs, batch_size=32, verbose=0,
    callbacks=kcallbacks.standard_callbacks(run_dir, early_stopping_patience=5, reduce_lr_patience=2),
)
print("TRAINING_DONE", flush=True)
