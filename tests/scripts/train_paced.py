"""Trains the digits model with the standard callbacks, one epoch every
EPOCH_SECONDS at most, so that a watcher sees the run grow; prints each
epoch the callbacks have finished. Usage: train_paced.py RUN_DIR EPOCHS
EPOCH_SECONDS [HOLD_FILE]: with HOLD_FILE, the last epoch's end waits (up to
5 minutes) until that file exists, so the fit holds the run until a test
lets it go."""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import kcallbacks  # noqa: E402
from training import digits_data, digits_model  # noqa: E402


class Pace(keras.callbacks.Callback):
    def __init__(self, seconds, hold_file=None):
        super().__init__()
        self.seconds = seconds
        self.hold_file = hold_file

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        print(f"EPOCH_DONE {epoch}", flush=True)
        time.sleep(max(self.seconds - (time.monotonic() - self.started), 0.0))
        if self.hold_file and epoch == self.params["epochs"] - 1:
            deadline = time.monotonic() + 300
            while not os.path.exists(self.hold_file) and time.monotonic() < deadline:
                time.sleep(0.05)


run_dir, epochs, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
hold_file = sys.argv[4] if len(sys.argv) > 4 else None
x, y = digits_data()
model = digits_model()
callbacks = kcallbacks.standard_callbacks(run_dir, reduce_lr_patience=1)
model.fit(
    x, y, validation_split=0.25, epochs=epochs, batch_size=32, verbose=0,
    callbacks=callbacks + [Pace(seconds, hold_file)],
)
print("TRAINING_DONE", flush=True)
