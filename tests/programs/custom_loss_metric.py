"""A custom loss class and a custom metric class, from keras.io's
"Training & evaluation with the built-in methods" guide ("Custom losses",
"Custom metrics"): `CustomMSE` with a regularization factor and
`CategoricalTruePositives`, on the digits, one-hot."""

import common
import keras
from keras import ops

keras.utils.set_random_seed(0)


class CustomMSE(keras.losses.Loss):
    def __init__(self, regularization_factor=0.1, name="custom_mse"):
        super().__init__(name=name)
        self.regularization_factor = regularization_factor

    def call(self, y_true, y_pred):
        mse = ops.mean(ops.square(y_true - y_pred), axis=-1)
        reg = ops.mean(ops.square(0.5 - y_pred), axis=-1)
        return mse + reg * self.regularization_factor


class CategoricalTruePositives(keras.metrics.Metric):
    def __init__(self, name="categorical_true_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(
            shape=(), name="ctp", initializer="zeros"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.reshape(ops.argmax(y_pred, axis=1), (-1, 1))
        values = ops.cast(y_true, "int32") == ops.cast(y_pred, "int32")
        values = ops.cast(values, "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            values = ops.multiply(values, sample_weight)
        self.true_positives.assign_add(ops.sum(values))

    def result(self):
        return self.true_positives

    def reset_state(self):
        # The state of the metric will be reset at the start of each epoch.
        self.true_positives.assign(0.0)


inputs = keras.Input(shape=(64,), name="digits")
x = keras.layers.Dense(32, activation="relu")(inputs)
outputs = keras.layers.Dense(10, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
    loss=CustomMSE(),
    metrics=[CategoricalTruePositives()],
)
x_train, y_train = common.digits(one_hot=True)
history = model.fit(
    x_train, y_train, batch_size=64, epochs=3, validation_split=0.2, verbose=0,
    shuffle=common.shuffle(), callbacks=common.callbacks(),
)
common.finish(model, [history])
