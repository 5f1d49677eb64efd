"""The demo: trains a small real model on scikit-learn's digits with the
kcallbacks suite, into a run directory, prints what was recorded, and builds
the run's HTML report with `kreport build`.

Interrupt it (Ctrl-C, kill -9) and run it again: it resumes where the last
backup left off. Run it after it finished: it restores the final model,
trains nothing, and builds the report again. Delete RUN_DIR to start afresh.

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
    model.fit(
        x_train, y_train,
        validation_data=(x_val, y_val),
        epochs=30, batch_size=32, verbose=2,
        callbacks=kcallbacks.standard_callbacks(
            run_dir, monitor="val_loss", early_stopping_patience=4, reduce_lr_patience=2,
        ),
    )
    run = kcallbacks.load_run(run_dir)
    print(f"\nRun directory: {run.path} (status: {run.manifest['status']})")
    print(run.history[["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]]
          .to_string(index=False))
    print(f"{len(run.batches)} training steps, each with its own loss, in {run.path}/batches.bin")

    # The report, made by the kreport command line as a user would run it.
    subprocess.run([sys.executable, "-m", "kreport.main", "build", run_dir], check=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("runs", "demo"))
