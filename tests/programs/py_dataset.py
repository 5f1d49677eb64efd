"""A `keras.utils.PyDataset` of its own, as keras.io's "Training &
evaluation with the built-in methods" guide writes one ("Using a
`PyDataset` instance as input"), for training and for validation."""

import math

import common
import keras
import numpy as np


class ExamplePyDataset(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x = x
        self.y = y
        self.batch_size = batch_size

    def __len__(self):
        return int(np.ceil(len(self.x) / float(self.batch_size)))

    def __getitem__(self, idx):
        batch_x = self.x[idx * self.batch_size : (idx + 1) * self.batch_size]
        batch_y = self.y[idx * self.batch_size : (idx + 1) * self.batch_size]
        return batch_x, batch_y


keras.utils.set_random_seed(0)
x, y = common.digits(n=600)
train_py_dataset = ExamplePyDataset(x[:500], y[:500], batch_size=64)
val_py_dataset = ExamplePyDataset(x[500:], y[500:], batch_size=64)
assert len(train_py_dataset) == math.ceil(500 / 64)

model = keras.Sequential(
    [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
)
model.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
history = model.fit(
    train_py_dataset, validation_data=val_py_dataset, epochs=4, verbose=0,
    callbacks=common.callbacks(),
)
common.finish(model, [history])
