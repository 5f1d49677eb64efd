"""A layer that adds a loss with `self.add_loss` (activity regularization),
from keras.io's "Training & evaluation with the built-in methods" guide
("Handling losses and metrics that don't fit the standard signature"), in
the guide's functional MNIST model, here on the digits."""

import common
import keras
from keras import layers, ops

keras.utils.set_random_seed(0)


class ActivityRegularizationLayer(layers.Layer):
    def call(self, inputs):
        self.add_loss(ops.sum(inputs) * 0.1)
        return inputs  # Pass-through layer.


inputs = keras.Input(shape=(64,), name="digits")
x = layers.Dense(32, activation="relu", name="dense_1")(inputs)
# Insert activity regularization as a layer
x = ActivityRegularizationLayer()(x)
x = layers.Dense(32, activation="relu", name="dense_2")(x)
outputs = layers.Dense(10, name="predictions")(x)
model = keras.Model(inputs=inputs, outputs=outputs)
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
x_train, y_train = common.digits()
history = model.fit(
    x_train, y_train, batch_size=64, epochs=4, validation_split=0.2, verbose=0,
    shuffle=common.shuffle(), callbacks=common.callbacks(),
)
common.finish(model, [history])
