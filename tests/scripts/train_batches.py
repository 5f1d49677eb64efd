"""Trains with Keras' BackupAndRestore and a BatchLossTracker that flushes
often; prints how many steps the tracker has flushed after each epoch.
Usage: train_batches.py RUN_DIR BACKUP_DIR EPOCHS"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import kcallbacks  # noqa: E402
from training import digits_data, digits_model  # noqa: E402

run_dir, backup_dir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
tracker = kcallbacks.BatchLossTracker(run_dir, flush_every_steps=8, flush_interval=0.05)


class AnnounceFlushed(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.01)

    def on_epoch_end(self, epoch, logs=None):
        print(f"FLUSHED {len(tracker.per_batch_losses)}", flush=True)


x, y = digits_data(512)
model = digits_model()
model.fit(
    x, y, epochs=epochs, batch_size=32, verbose=0,
    callbacks=[keras.callbacks.BackupAndRestore(backup_dir), tracker, AnnounceFlushed()],
)
print("TRAINING_DONE", flush=True)
