"""The benchmarks' models (seeded multilayer perceptrons) and their epoch clock."""

import time

import keras


def mlp(widths, **compile_kwargs):
    """A seeded MLP: `widths` = (inputs, hidden..., outputs), ReLU between
    layers, compiled with `compile_kwargs`."""
    keras.utils.set_random_seed(0)
    inputs, *hidden, outputs = widths
    model = keras.Sequential(
        [keras.Input((inputs,))]
        + [keras.layers.Dense(width, activation="relu") for width in hidden]
        + [keras.layers.Dense(outputs)]
    )
    model.compile(**compile_kwargs)
    return model


class EpochClock(keras.callbacks.Callback):
    """Notes when each epoch begins (it runs after the callbacks measured)."""

    def __init__(self):
        super().__init__()
        self.starts = []

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())
