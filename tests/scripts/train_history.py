"""Trains the digits model with HistoryLogger until killed; prints each epoch
that the logger has finished writing. Usage: train_history.py RUN_DIR EPOCHS"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import kcallbacks  # noqa: E402
from training import digits_data, digits_model  # noqa: E402


class AnnounceEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        print(f"EPOCH_DONE {epoch}", flush=True)
        time.sleep(0.05)


run_dir, epochs = sys.argv[1], int(sys.argv[2])
x, y = digits_data()
model = digits_model()
model.fit(
    x, y, epochs=epochs, batch_size=32, verbose=0,
    callbacks=[kcallbacks.HistoryLogger(run_dir), AnnounceEpoch()],
)
print("TRAINING_DONE", flush=True)
