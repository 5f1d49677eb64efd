"""The "endpoint layer" of keras.io's "Training & evaluation with the
built-in methods" guide: a layer that takes targets and logits, adds its
loss with `add_loss`, and a model compiled with no loss at all, fit on a
dict of inputs without `y`. Data as in the guide: random."""

import common
import keras
import numpy as np
from keras import ops


class LogisticEndpoint(keras.layers.Layer):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    def call(self, targets, logits, sample_weights=None):
        # Compute the training-time loss value and add it
        # to the layer using `self.add_loss()`.
        loss = self.loss_fn(targets, logits, sample_weights)
        self.add_loss(loss)

        # Return the inference-time prediction tensor (for `.predict()`).
        return ops.softmax(logits)


keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(3,), name="inputs")
targets = keras.Input(shape=(10,), name="targets")
logits = keras.layers.Dense(10)(keras.layers.Dense(16, activation="relu")(inputs))
predictions = LogisticEndpoint(name="predictions")(targets, logits)

model = keras.Model(inputs=[inputs, targets], outputs=predictions)
model.compile(optimizer="adam")  # No loss argument!

rng = np.random.default_rng(0)
data = {
    "inputs": rng.random((300, 3)).astype("float32"),
    "targets": rng.random((300, 10)).astype("float32"),
}
history = model.fit(
    data, batch_size=32, epochs=3, validation_split=0.2, verbose=0,
    shuffle=common.shuffle(), callbacks=common.callbacks(),
)
common.finish(model, [history])
