"""The demo: trains a small real model on scikit-learn's digits with the
callback suite, into a run directory, prints what was recorded, and builds
the run's HTML report with `kreport build`.

Usage: python examples/demo.py [RUN_DIR]   (default: runs/demo)
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import kcallbacks  # noqa: E402


def main(run_dir):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, digits.target, test_size=0.25, random_state=0
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    model.fit(
        x_train, y_train,
        validation_data=(x_val, y_val),
        epochs=20, batch_size=32, verbose=2,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                os.path.join(run_dir, "checkpoints", "{epoch:02d}-{val_loss:.4f}.keras"),
                monitor="val_loss", save_best_only=True,
            ),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True),
            kcallbacks.HistoryLogger(run_dir),
        ],
    )
    run = kcallbacks.load_run(run_dir)
    print(f"\nRun directory: {run.path} (status: {run.manifest['status']})")
    print(run.history[["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]].to_string(index=False))

    # The report, made by the kreport command line as a user would run it.
    subprocess.run([sys.executable, "-m", "kreport.main", "build", run_dir], check=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("runs", "demo"))
