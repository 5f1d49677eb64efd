"""What the real programs of the corpus share, none of it the program itself.

Each program in this directory is a training script written the way a
public source writes it (a keras.io guide, keras-tuner's or Optuna's
documentation), with `kcallbacks.standard_callbacks(...)` added to its fits
through `callbacks()` below, and nothing else changed. Run one as

    python tests/programs/PROGRAM.py RUN_DIR

What the test reads comes from here:

- `Probe`, a plain Keras callback added after the suite: it keeps the
  running mean of the loss that Keras reports after every training batch,
  from which each step's own loss is recomputed independently of
  kcallbacks (Keras' loss tracker is a mean weighted by batch size), and
  it prints `EPOCH <fit> <epoch>` after each epoch, the moment a test's
  SIGKILL aims at;
- `finish()`, which writes `RUN_DIR.out.json` (every fit's
  `History.history`, the probe's rows) and `RUN_DIR.final.npz` (the
  model's and its optimizers' variables at the end).

`KC_FIXED_ORDER=1` turns array shuffling off: TensorFlow draws its shuffle
order from op-level random state that no backup can restore (see
BackupAndRestore), so the kill-and-resume tests run the array programs on
TensorFlow with a fixed order.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcallbacks  # noqa: E402

_probed = []
_epoch_logs = {}
_fits = [0]
# KC_PROBE_BATCHES=1: a `BATCH <fit> <epoch> <batch>` line after each batch
# too, for a kill in the middle of an epoch.
_BATCH_LINES = os.environ.get("KC_PROBE_BATCHES") == "1"


def run_dir():
    return sys.argv[1]


def shuffle():
    """fit's `shuffle`: the guides' default, unless the test fixes the order."""
    return os.environ.get("KC_FIXED_ORDER") != "1"


def digits(n=512, one_hot=False, images=False):
    """scikit-learn's digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data[:n] / 16.0).astype("float32")
    y = data.target[:n].astype("int32")
    if images:
        x = x.reshape(-1, 8, 8, 1)
    if one_hot:
        y = keras.utils.to_categorical(y, 10).astype("float32")
    return x, y


class Probe(keras.callbacks.Callback):
    """See the module docstring. `key` is the log whose running mean it keeps."""

    def __init__(self, key="loss"):
        super().__init__()
        self.key = key

    def on_train_begin(self, logs=None):
        self._fit = _fits[0]
        _fits[0] += 1

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and self.key in logs:
            _probed.append([self._fit, self._epoch, batch, float(logs[self.key])])
        if _BATCH_LINES:
            print(f"BATCH {self._fit} {self._epoch} {batch}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        # What a History callback records, for fits whose History the
        # program does not see (a tuner's).
        history = _epoch_logs.setdefault(self._fit, {})
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        print(f"EPOCH {self._fit} {epoch}", flush=True)


def callbacks(directory=None, probe_key="loss", **kwargs):
    """The program's callbacks: the kcallbacks suite, then the probe.
    `KC_BARE=1`: the probe alone (the program as Keras runs it without
    kcallbacks)."""
    if os.environ.get("KC_BARE") == "1":
        return [Probe(probe_key)]
    if os.environ.get("KC_KERAS") == "1":
        return keras_builtins(directory or run_dir(), **kwargs) + [Probe(probe_key)]
    kwargs.setdefault("early_stopping_patience", 5)
    kwargs.setdefault("reduce_lr_patience", 2)
    return kcallbacks.standard_callbacks(directory or run_dir(), **kwargs) + [Probe(probe_key)]


def keras_builtins(directory, monitor="val_loss", mode="auto", backup_freq="epoch", **_):
    """`KC_KERAS=1`: Keras' own callbacks in place of the suite, set as the
    suite sets its own (tests/programs/compare_with_keras.py)."""
    os.makedirs(directory, exist_ok=True)  # Keras' CSVLogger does not make it
    return [
        keras.callbacks.CSVLogger(os.path.join(directory, "history.csv")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(directory, "checkpoints", f"{{epoch:02d}}-{{{monitor}:.4f}}.weights.h5"),
            monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True,
        ),
        keras.callbacks.BackupAndRestore(os.path.join(directory, "backup"), save_freq=backup_freq),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, patience=2),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=5, restore_best_weights=True
        ),
    ]


def state_arrays(model):
    """The model's variables and those of every optimizer it holds."""
    arrays = [np.asarray(v) for v in model.variables]
    optimizers = [getattr(model, "optimizer", None)] + [
        value for name, value in sorted(vars(model).items())
        if isinstance(value, keras.optimizers.Optimizer)
    ]
    seen = []
    for optimizer in optimizers:
        if optimizer is not None and not any(optimizer is s for s in seen):
            seen.append(optimizer)
            arrays += [np.asarray(v) for v in optimizer.variables]
    return arrays


def finish(model, histories=None, runs=None, **extra):
    """Writes what the test compares; prints PROGRAM_DONE. `histories`:
    the program's `History` objects, one per fit (None: as the probe saw
    them); `runs`: the run directory of each fit, relative to RUN_DIR
    (None: all of them into RUN_DIR)."""
    directory = os.path.normpath(run_dir())
    if model is not None:
        np.savez(directory + ".final.npz", *state_arrays(model))
    if histories is None:
        histories = [_epoch_logs.get(fit, {}) for fit in range(_fits[0])]
    out = {
        "histories": [h.history if hasattr(h, "history") else h for h in histories],
        "runs": runs or ["."] * len(histories),
        "probe": _probed,
        **extra,
    }
    with open(directory + ".out.json", "w") as f:
        json.dump(out, f, default=float)
    print("PROGRAM_DONE", flush=True)
