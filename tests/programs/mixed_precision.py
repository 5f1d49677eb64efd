"""Mixed precision, as keras.io's "Mixed precision" guide sets it up: the
global policy `mixed_float16` (so `compile` wraps the optimizer in a
`LossScaleOptimizer`), a float32 softmax output layer, on the digits."""

import common
import keras
from keras import layers

keras.mixed_precision.set_global_policy("mixed_float16")
keras.utils.set_random_seed(0)

inputs = keras.Input(shape=(64,), name="digits")
x = layers.Dense(64, activation="relu", name="dense_1")(inputs)
x = layers.Dense(64, activation="relu", name="dense_2")(x)
x = layers.Dense(10, name="dense_logits")(x)
# The output in float32, for numeric stability.
outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
model = keras.Model(inputs=inputs, outputs=outputs)
model.compile(
    loss="sparse_categorical_crossentropy",
    optimizer=keras.optimizers.RMSprop(),
    metrics=["accuracy"],
)
assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
x_train, y_train = common.digits()
history = model.fit(
    x_train, y_train, batch_size=64, epochs=3, validation_split=0.2, verbose=0,
    shuffle=common.shuffle(), callbacks=common.callbacks(),
)
common.finish(model, [history])
