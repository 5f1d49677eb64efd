"""A loop of `fit(epochs=1)`: the pattern of notebooks and hand-written
schedules (evaluate or adjust between epochs), with one callback list made
once and passed to every call, as such loops do."""

import common
import keras

keras.utils.set_random_seed(0)
x, y = common.digits()
model = keras.Sequential(
    [keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
     keras.layers.Dropout(0.1), keras.layers.Dense(10)]
)
model.compile(
    optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
callbacks = common.callbacks()
histories = []
for round_ in range(5):
    histories.append(model.fit(
        x, y, epochs=1, batch_size=64, validation_split=0.25, verbose=0,
        shuffle=common.shuffle(), callbacks=callbacks,
    ))
    # Something between the fits that depends on the weights.
    model.evaluate(x[:64], y[:64], verbose=0)
common.finish(model, histories)
