"""Training from a `tf.data.Dataset` with `steps_per_epoch` and
`validation_steps`, as keras.io's "Training & evaluation with the built-in
methods" guide does ("Training & evaluation using tf.data Datasets"): the
dataset is shuffled and batched, and each epoch draws `steps_per_epoch`
batches, going on from where the previous epoch stopped. Keras takes
tf.data on every backend."""

import common
import keras
import tensorflow as tf

keras.utils.set_random_seed(0)
x_train, y_train = common.digits(n=1024)
x_val, y_val = x_train[-256:], y_train[-256:]
x_train, y_train = x_train[:-256], y_train[:-256]

train_dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train))
train_dataset = train_dataset.shuffle(buffer_size=1024, seed=1).batch(64)
val_dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(64)

inputs = keras.Input(shape=(64,), name="digits")
x = keras.layers.Dense(32, activation="relu")(inputs)
outputs = keras.layers.Dense(10, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=[keras.metrics.SparseCategoricalAccuracy()],
)
# Only use the 5 batches per epoch (that's 5 * 64 samples)
history = model.fit(
    train_dataset, epochs=4, steps_per_epoch=5, validation_data=val_dataset,
    validation_steps=2, verbose=0, callbacks=common.callbacks(),
)
common.finish(model, [history])
