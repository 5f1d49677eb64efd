"""Small real models for the tests, built the same way in-process and in subprocesses."""

import os

import keras

import kcallbacks


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


class Interrupted(Exception):
    """Raised by InterruptAt: a stand-in for a crash, for report fixtures.
    (Crash-safety itself is tested with real SIGKILLs.)"""


class InterruptAt(keras.callbacks.Callback):
    """Aborts the fit at the beginning of `epoch`, or with `batch`, at the end
    of that batch of the first epoch, by raising `error`."""

    def __init__(self, epoch=0, batch=None, error=Interrupted):
        super().__init__()
        self.epoch = epoch
        self.batch = batch
        self.error = error
        self._in_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._in_epoch = epoch
        if self.batch is None and epoch == self.epoch:
            raise self.error(f"interrupted at epoch {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        if self._in_epoch == self.epoch and batch == self.batch:
            raise self.error(f"interrupted after batch {batch}")


def resumed_run(run_dir, x, y):
    """A real run of the digits model in `run_dir` with the kcallbacks suite:
    interrupted at the start of epoch 3, then re-run; BackupAndRestore
    resumes it at epoch 3, where the learning rate halves and early stopping
    ends the fit (a `min_delta` no epoch can beat)."""
    import kcallbacks

    model = digits_model()
    fit = dict(x=x, y=y, batch_size=64, validation_split=0.25, verbose=0, epochs=10)

    def suite(*extra):
        return [
            kcallbacks.HistoryLogger(run_dir),
            kcallbacks.BatchLossTracker(run_dir),
            kcallbacks.ModelCheckpoint(
                os.path.join(run_dir, "checkpoints", "{epoch:02d}-{val_loss:.4f}.weights.h5"),
                save_best_only=True, save_weights_only=True, max_to_keep=3,
            ),
            *extra,
            kcallbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
        ]

    try:
        model.fit(callbacks=suite() + [InterruptAt(3)], **fit)
    except Interrupted:
        pass
    model.fit(
        callbacks=suite(
            kcallbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=0, min_delta=10),
            kcallbacks.EarlyStopping("val_loss", min_delta=10, patience=1),
        ),
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


def acting_suite(run_dir):
    """ModelCheckpoint, ReduceLROnPlateau and EarlyStopping set so that, on
    the scripted digits runs, each acts within a dozen epochs: rolling best
    checkpoints, a halving rate with cooldown, and an early stop that
    restores the best weights."""
    return [
        kcallbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", "{epoch:02d}-{val_loss:.4f}.weights.h5"),
            monitor="val_loss", save_best_only=True, save_weights_only=True, max_to_keep=2,
        ),
        kcallbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, cooldown=1, min_delta=0.15),
        kcallbacks.EarlyStopping(monitor="val_loss", min_delta=0.08, patience=3, restore_best_weights=True),
    ]
