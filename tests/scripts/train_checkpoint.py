"""Trains a ~4M-parameter model (a 50 MB checkpoint with Adam's state) with
two ModelCheckpoints, one writing synchronously into OUT/sync and one in the
background into OUT/async, until killed. Prints `EPOCH_END n` just before the
checkpoints of epoch n start saving. Usage: train_checkpoint.py OUT EPOCHS"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import kcallbacks  # noqa: E402
from training import digits_data, wide_model  # noqa: E402

TEMPLATE = "{epoch:03d}-{loss:.4f}.weights.h5"


class AnnounceEpochEnd(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        print(f"EPOCH_END {epoch}", flush=True)


def checkpoints(out, async_save):
    directory = os.path.join(out, "async" if async_save else "sync")
    return kcallbacks.ModelCheckpoint(
        os.path.join(directory, TEMPLATE), monitor="loss", save_weights_only=True,
        max_to_keep=2, async_save=async_save,
    )


if __name__ == "__main__":
    out, epochs = sys.argv[1], int(sys.argv[2])
    x, y = digits_data(256)
    wide_model().fit(
        x, y, epochs=epochs, batch_size=128, verbose=0,
        callbacks=[
            kcallbacks.HistoryLogger(os.path.join(out, "run")),
            AnnounceEpochEnd(),
            checkpoints(out, async_save=False),
            checkpoints(out, async_save=True),
        ],
    )
    print("TRAINING_DONE", flush=True)
