"""Small real models for the tests, built the same way in-process and in subprocesses."""

import os

import keras
import numpy as np


def digits_data(n=512):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data[:n] / 16.0).astype("float32")
    y = data.target[:n].astype("int32")
    return x, y


def digits_model(seed=0, learning_rate=0.01, metrics=("accuracy",), **compile_kwargs):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
        **compile_kwargs,
    )
    return model


class AddLogs(keras.callbacks.Callback):
    """Puts extra values into the epoch logs, from a given epoch on: how a
    metric that first appears mid-run reaches the callbacks after it."""

    def __init__(self, values, from_epoch=0):
        super().__init__()
        self.values = values
        self.from_epoch = from_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.from_epoch:
            for key, value in self.values.items():
                logs[key] = value(epoch) if callable(value) else value


class RunEventRecorder(keras.callbacks.Callback):
    """Writes what the batch-logging, checkpoint, LR and early-stop callbacks
    will write, through the RunDirectory API, from a real fit: a per-batch
    record per step (with the loss Keras reports at batch end), a saved
    checkpoint whenever val_loss improves, an `lr_reduced` event when the
    rate drops at an epoch end, `resumed` when a fit starts past epoch 0, and
    `early_stop` when the fit was stopped."""

    def __init__(self, run_dir):
        super().__init__()
        from kcallbacks.run_directory import RunDirectory

        self.run = RunDirectory(run_dir, create=True)
        os.makedirs(self.run.file("checkpoints"), exist_ok=True)
        self.dtype = self.run.open_batch_log()
        records, _ = self.run.read_batch_records()
        self.step = int(records["step"][-1]) + 1 if records is not None and len(records) else 0
        self.best = self.best_epoch = None
        self.first_epoch = None
        self.rate = None

    def _rate(self):
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch > 0:
                self.run.append_event("resumed", epoch=epoch, step=self.step)
        self.rate = self._rate()

    def on_train_batch_end(self, batch, logs=None):
        record = np.zeros(1, dtype=self.dtype)
        record["step"], record["epoch"], record["batch"] = self.step, self.epoch, batch
        record["size"], record["loss"] = 64, float(logs["loss"])
        self.run.append_batches(record)
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        # Listed after ReduceLROnPlateau, this sees the rate it just set.
        if self._rate() < self.rate:
            self.run.append_event("lr_reduced", epoch=epoch, old=self.rate, new=self._rate())
        value = float(logs["val_loss"])
        if self.best is None or value < self.best:
            self.best, self.best_epoch = value, epoch
            path = f"checkpoints/{epoch + 1:02d}-{value:.4f}.weights.h5"
            self.model.save_weights(f"{self.run.path}/{path}")
            self.run.append_event("checkpoint_saved", epoch=epoch, step=self.step, path=path,
                                  monitor="val_loss", value=value, best=True)

    def on_train_end(self, logs=None):
        if self.model.stop_training:
            self.run.append_event("early_stop", epoch=self.epoch, best_epoch=self.best_epoch,
                                  best_value=self.best, monitor="val_loss",
                                  restored_best_weights=False)


def resumed_run(run_dir, x, y):
    """A real run of the digits model in `run_dir`: 3 epochs, then a resumed
    fit from epoch 3 that reduces the learning rate and stops early."""
    import kcallbacks

    model = digits_model()
    fit = dict(x=x, y=y, batch_size=64, validation_split=0.25, verbose=0)
    model.fit(epochs=3, callbacks=[RunEventRecorder(run_dir), kcallbacks.HistoryLogger(run_dir)], **fit)
    model.fit(
        epochs=10, initial_epoch=3,
        callbacks=[
            # A min_delta no epoch can beat: the rate halves and the fit stops
            # after the resumed fit's first epoch.
            keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=0, min_delta=10),
            keras.callbacks.EarlyStopping("val_loss", min_delta=10, patience=1),
            RunEventRecorder(run_dir),
            kcallbacks.HistoryLogger(run_dir),
        ],
        **fit,
    )


class RecordWeights(keras.callbacks.Callback):
    """Keeps the model's weights at the end of every epoch, by epoch."""

    def __init__(self):
        super().__init__()
        self.by_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch[epoch] = self.model.get_weights()


class CountBatches(keras.callbacks.Callback):
    """Counts the training batches a fit ran."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def scripted(values):
    """AddLogs for a metric `score` that takes `values[epoch]`: a monitored
    quantity whose course a test decides."""
    return AddLogs({"score": lambda epoch: values[epoch]})


def fit_digits(model, epochs, callbacks, n=256, **kwargs):
    """A short real fit on the digits: two batches per epoch by default."""
    x, y = digits_data(n)
    kwargs.setdefault("batch_size", 128)
    return model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def wide_model(width=2048):
    """The digits classifier with two wide hidden layers: 4.35M parameters at
    the default width, a 52 MB `.weights.h5` with Adam's state, big enough
    that writing a checkpoint takes a while."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model
