"""Small real models for the tests, built the same way in-process and in subprocesses."""

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
