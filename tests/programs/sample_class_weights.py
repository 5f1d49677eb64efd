"""Class weights, then sample weights, from keras.io's "Training &
evaluation with the built-in methods" guide ("Using sample weighting and
class weighting"): the guide fits with `class_weight` (class 5 weighted
2.0), then with `sample_weight`. Here both fits train one model, one after
the other, into one run."""

import common
import keras
import numpy as np

keras.utils.set_random_seed(0)
x_train, y_train = common.digits()


def get_compiled_model():
    inputs = keras.Input(shape=(64,), name="digits")
    x = keras.layers.Dense(32, activation="relu", name="dense_1")(inputs)
    x = keras.layers.Dense(32, activation="relu", name="dense_2")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["sparse_categorical_accuracy"],
    )
    return model


class_weight = {c: 1.0 for c in range(10)}
class_weight[5] = 2.0  # Set weight "2" for class "5", making this class 2x more important

model = get_compiled_model()
first = model.fit(
    x_train, y_train, class_weight=class_weight, batch_size=64, epochs=2,
    validation_split=0.2, verbose=0, shuffle=common.shuffle(), callbacks=common.callbacks(),
)

sample_weight = np.ones(shape=(len(y_train),))
sample_weight[y_train == 5] = 2.0
second = model.fit(
    x_train, y_train, sample_weight=sample_weight, batch_size=64, epochs=2,
    validation_split=0.2, verbose=0, shuffle=common.shuffle(), callbacks=common.callbacks(),
)
common.finish(model, [first, second])
