"""Trains the digits model with ModelCheckpoint (the best weights, the 2 best
kept) and BackupAndRestore into RUN_DIR: the README's "continue a finished
run" case. Run it again with more epochs to continue. The backend is
KERAS_BACKEND's. With KILL_EPOCH the process SIGKILLs itself at the end of
that epoch, after the other callbacks' epoch end (a checkpoint saved and an
older one evicted) and before the next backup snapshot.
Usage: train_best_checkpoints.py RUN_DIR EPOCHS [KILL_EPOCH]"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import kcallbacks  # noqa: E402
from training import digits_data, digits_model  # noqa: E402


class KillAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    run_dir, epochs = sys.argv[1], int(sys.argv[2])
    kill = [KillAtEpochEnd(int(sys.argv[3]))] if len(sys.argv) > 3 else []
    x, y = digits_data(256)
    digits_model().fit(
        x, y, validation_split=0.25, epochs=epochs, batch_size=64, shuffle=False, verbose=0,
        callbacks=[
            kcallbacks.HistoryLogger(run_dir),
            kcallbacks.ModelCheckpoint(
                os.path.join(run_dir, "checkpoints", "{epoch:02d}-{val_loss:.4f}.weights.h5"),
                save_best_only=True, save_weights_only=True, max_to_keep=2,
            ),
            kcallbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
            *kill,
        ],
    )
    print("TRAINING_DONE", flush=True)
