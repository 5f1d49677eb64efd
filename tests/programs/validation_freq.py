"""`fit(validation_freq=2)`: validation every other epoch, as the training
guide's `fit` arguments allow, with the suite monitoring `val_loss`."""

import common
import keras

keras.utils.set_random_seed(0)
x, y = common.digits()
model = keras.Sequential(
    [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
)
model.compile(
    optimizer=keras.optimizers.Adam(0.01),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
history = model.fit(
    x, y, epochs=6, batch_size=64, validation_split=0.25, validation_freq=2,
    verbose=0, shuffle=common.shuffle(),
    callbacks=common.callbacks(early_stopping_patience=2, reduce_lr_patience=1),
)
common.finish(model, [history])
