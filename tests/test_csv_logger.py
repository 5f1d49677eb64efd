"""kcallbacks.CSVLogger against keras.callbacks.CSVLogger on the same fits."""

import keras
import pandas as pd
import pytest

import kcallbacks
from training import AddLogs, digits_data, digits_model

# Behavioural: CI runs this file on every backend.
pytestmark = pytest.mark.all_backends


@pytest.mark.parametrize("validation_split", [0.0, 0.25])
@pytest.mark.parametrize("separator", [",", ";"])
def test_same_file_as_keras(tmp_path, validation_split, separator):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "keras.csv"
    x, y = digits_data()
    digits_model().fit(
        x, y, epochs=3, batch_size=64, verbose=0, validation_split=validation_split,
        callbacks=[
            kcallbacks.CSVLogger(ours, separator=separator),
            keras.callbacks.CSVLogger(str(theirs), separator=separator),
        ],
    )
    assert ours.read_bytes() == theirs.read_bytes()
    assert len(ours.read_text().splitlines()) == 4


def test_append_continues_the_file_like_keras(tmp_path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "keras.csv"
    x, y = digits_data()
    model = digits_model()
    for initial_epoch, epochs in [(0, 2), (2, 4)]:
        model.fit(
            x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=64, verbose=0,
            callbacks=[
                kcallbacks.CSVLogger(ours, append=True),
                keras.callbacks.CSVLogger(str(theirs), append=True),
            ],
        )
    assert ours.read_bytes() == theirs.read_bytes()
    assert pd.read_csv(ours)["epoch"].tolist() == [0, 1, 2, 3]


def test_overwrites_without_append(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old,content\n1,2\n")
    x, y = digits_data()
    digits_model().fit(x, y, epochs=2, verbose=0, callbacks=[kcallbacks.CSVLogger(path)])
    assert pd.read_csv(path)["epoch"].tolist() == [0, 1]


def test_keeps_a_key_keras_drops(tmp_path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "keras.csv"
    x, y = digits_data()
    digits_model().fit(
        x, y, epochs=4, batch_size=64, verbose=0, validation_split=0.25,
        callbacks=[
            AddLogs({"late": lambda epoch: float(epoch)}, from_epoch=2),
            kcallbacks.CSVLogger(ours),
            keras.callbacks.CSVLogger(str(theirs)),
        ],
    )
    assert "late" not in pd.read_csv(theirs).columns
    ours_frame = pd.read_csv(ours)
    assert ours_frame["late"].isna().tolist() == [True, True, False, False]
    assert ours_frame["late"].tolist()[2:] == [2.0, 3.0]
    # Apart from the new column, the rows are Keras' rows.
    pd.testing.assert_frame_equal(ours_frame.drop(columns="late"), pd.read_csv(theirs))
