"""Trains the digits model with ModelCheckpoint (the best weights, the 2 best
kept) and BackupAndRestore into RUN_DIR: the README's "continue a finished
run" case. Run it again with more epochs to continue. The backend is
KERAS_BACKEND's. Usage: train_best_checkpoints.py RUN_DIR EPOCHS"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kcallbacks  # noqa: E402
from training import digits_data, digits_model  # noqa: E402

if __name__ == "__main__":
    run_dir, epochs = sys.argv[1], int(sys.argv[2])
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
        ],
    )
    print("TRAINING_DONE", flush=True)
