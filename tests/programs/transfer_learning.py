"""The keras.io "Transfer learning & fine-tuning" recipe, on the digits.

A base model is trained first (standing in for the guide's ImageNet
weights, which cannot be downloaded here), then, as the guide does: the
base is frozen and called in inference mode under a new head, the model is
compiled and fit; then the base is unfrozen, the model compiled again with
a low learning rate and fit again, continuing at `initial_epoch`.
Source: keras-io/guides/transfer_learning.py ("The typical transfer-learning
workflow", "Fine-tuning").
"""

import common
import keras

keras.utils.set_random_seed(0)
x, y = common.digits(images=True)

# The "pre-trained" base: a small convnet with BatchNormalization.
base_model = keras.Sequential(
    [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(8, 3, activation="relu"),
    ],
    name="base",
)
pretraining = keras.Sequential(
    [base_model, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
)
pretraining.compile(
    "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
)
pretraining.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)

# Freeze the base model.
base_model.trainable = False

# Create a new model on top.
inputs = keras.Input(shape=(8, 8, 1))
# The base model runs in inference mode here, so its BatchNormalization
# layers keep their statistics when it is unfrozen for fine-tuning.
h = base_model(inputs, training=False)
h = keras.layers.GlobalAveragePooling2D()(h)
h = keras.layers.Dropout(0.2)(h)
outputs = keras.layers.Dense(10)(h)
model = keras.Model(inputs, outputs)

model.compile(
    optimizer=keras.optimizers.Adam(),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=[keras.metrics.SparseCategoricalAccuracy()],
)
phase1 = model.fit(
    x, y, epochs=3, batch_size=64, validation_split=0.25, verbose=0,
    shuffle=common.shuffle(), callbacks=common.callbacks(),
)

# Unfreeze the base model and fine-tune with a low learning rate.
base_model.trainable = True
model.compile(
    optimizer=keras.optimizers.Adam(1e-4),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=[keras.metrics.SparseCategoricalAccuracy()],
)
phase2 = model.fit(
    x, y, epochs=6, initial_epoch=3, batch_size=64, validation_split=0.25, verbose=0,
    shuffle=common.shuffle(), callbacks=common.callbacks(),
)
common.finish(model, [phase1, phase2])
