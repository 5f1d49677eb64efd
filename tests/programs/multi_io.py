"""The multi-input, multi-output model of keras.io's "Training & evaluation
with the built-in methods" guide: ticket title, body and tags in; a
priority score and a department out; a loss per output with
`loss_weights`, and a metrics dict per output. Here the vocabulary and
sizes are small and the data synthetic (as in the guide), and the suite
backs up every 4 batches (`backup_freq`), so an interrupted run resumes
mid-epoch. Source: keras-io/guides/training_with_built_in_methods.py
("Passing data to multi-input, multi-output models")."""

import common
import keras
import numpy as np
from keras import layers

keras.utils.set_random_seed(0)
num_tags = 12
num_words = 200
num_departments = 4

title_input = keras.Input(shape=(None,), name="title")
body_input = keras.Input(shape=(None,), name="body")
tags_input = keras.Input(shape=(num_tags,), name="tags")
title_features = layers.Embedding(num_words, 16)(title_input)
body_features = layers.Embedding(num_words, 16)(body_input)
title_features = layers.LSTM(16)(title_features)
body_features = layers.LSTM(8)(body_features)
x = layers.concatenate([title_features, body_features, tags_input])
priority_pred = layers.Dense(1, name="priority")(x)
department_pred = layers.Dense(num_departments, name="department")(x)
model = keras.Model(
    inputs=[title_input, body_input, tags_input],
    outputs={"priority": priority_pred, "department": department_pred},
)
model.compile(
    optimizer=keras.optimizers.RMSprop(1e-3),
    loss={
        "priority": keras.losses.MeanSquaredError(),
        "department": keras.losses.CategoricalCrossentropy(from_logits=True),
    },
    loss_weights={"priority": 1.0, "department": 0.2},
    metrics={
        "priority": [keras.metrics.MeanAbsolutePercentageError(),
                     keras.metrics.MeanAbsoluteError()],
        "department": [keras.metrics.CategoricalAccuracy()],
    },
)

rng = np.random.default_rng(0)
n = 320
title_data = rng.integers(num_words, size=(n, 10))
body_data = rng.integers(num_words, size=(n, 24))
tags_data = rng.integers(2, size=(n, num_tags)).astype("float32")
priority_targets = rng.random(size=(n, 1)).astype("float32")
dept_targets = keras.utils.to_categorical(rng.integers(num_departments, size=n), num_departments)

history = model.fit(
    {"title": title_data, "body": body_data, "tags": tags_data},
    {"priority": priority_targets, "department": dept_targets},
    epochs=3, batch_size=32, validation_split=0.2, verbose=0,
    # A mid-epoch resume needs the same batches in the same order.
    shuffle=False,
    callbacks=common.callbacks(backup_freq=4),
)
common.finish(model, [history])
