"""ModelCheckpoint on real fits and real files: Keras' file names, the
template checked before training, max_to_keep with its best pointer and
index, background saves, write failures, SIGKILLs, events and state."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import kcallbacks
from kcallbacks.run_format import WRITER_LOCK
from training import (
    CountBatches, RecordWeights, digits_data, digits_model, fit_digits, scripted, wide_model,
)

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
MODES = [pytest.param(False, id="sync"), pytest.param(True, id="async")]


def names(directory):
    """The directory's files, but the writer lock of a run's checkpoints."""
    return sorted(n for n in os.listdir(directory) if n != WRITER_LOCK)


def load_into_fresh_model(path):
    model = digits_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return model


def assert_weights_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.all_backends
@pytest.mark.parametrize(
    "suffix, save_best_only",
    [(".weights.h5", True), (".keras", False)],
)
def test_same_files_as_keras(tmp_path, suffix, save_best_only):
    template = "{epoch:02d}-{val_loss:.4f}" + suffix
    kwargs = dict(save_weights_only=suffix == ".weights.h5", save_best_only=save_best_only)
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / template), **kwargs)
    ours = kcallbacks.ModelCheckpoint(str(tmp_path / "ours" / template), **kwargs)
    course = RecordWeights()
    model = digits_model()
    fit_digits(model, 4, [theirs, ours, course], validation_split=0.5)

    files = names(tmp_path / "ours")
    assert files == names(tmp_path / "keras") and len(files) >= 2
    for name in files:
        ours_mode = os.stat(tmp_path / "ours" / name).st_mode
        assert ours_mode == os.stat(tmp_path / "keras" / name).st_mode
    last = tmp_path / "ours" / files[-1]
    epoch = int(files[-1][:2]) - 1
    if suffix == ".keras":
        loaded = keras.models.load_model(last)
        assert_weights_equal(loaded.get_weights(), course.by_epoch[epoch])
    else:
        assert_weights_equal(load_into_fresh_model(last).get_weights(), course.by_epoch[epoch])


@pytest.mark.parametrize(
    "template, fit_kwargs, checkpoint_kwargs, message",
    [
        ("{epoch:02d}-{val_los:.4f}", dict(validation_split=0.5), {},
         r"uses \{val_los\}, which this fit's logs will not have\. Available: "
         "accuracy, epoch, loss, val_accuracy, val_loss"),
        ("{val_loss:.4f}", {}, {}, r"\{val_loss\}.*\(this fit has no validation data\)"),
        ("{epoch}-{batch}", {}, {}, r"\{batch\}.*\(batch needs an integer save_freq\)"),
        ("{accuracy}-{val_accuracy}", dict(validation_split=0.5), dict(save_freq=1),
         r"\{val_accuracy\}.*\(batch-level logs have no val_ keys\)"),
        ("{epoch:02d}-{loss:.4x}", {}, {}, "is not a valid format template"),
        ("{epoch}-{}", {}, {}, r"uses \{\}"),
    ],
)
def test_a_bad_template_is_a_value_error_before_any_batch(
        tmp_path, template, fit_kwargs, checkpoint_kwargs, message):
    count = CountBatches()
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / (template + ".weights.h5")), save_weights_only=True, **checkpoint_kwargs)
    with pytest.raises(ValueError, match=message):
        fit_digits(digits_model(), 3, [count, checkpoint], **fit_kwargs)
    assert count.batches == 0
    assert not any(name.endswith(".h5") for name in os.listdir(tmp_path))


def test_keras_finds_the_same_typo_only_after_an_epoch(tmp_path):
    count = CountBatches()
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "{epoch:02d}-{val_los:.4f}.weights.h5"), save_weights_only=True)
    with pytest.raises(KeyError):
        fit_digits(digits_model(), 3, [count, checkpoint], validation_split=0.5)
    assert count.batches == 1  # the whole first epoch (256 // 2 samples, batches of 128)


def test_templates_with_every_kind_of_key(tmp_path):
    by_epoch = kcallbacks.ModelCheckpoint(
        str(tmp_path / "e" / "{epoch:02d}-{accuracy:.3f}-{val_loss:.3f}-{learning_rate:.0e}"
            ".weights.h5"), save_weights_only=True)
    by_batch = kcallbacks.ModelCheckpoint(
        str(tmp_path / "b" / "{epoch}-{batch}-{loss:.2f}.weights.h5"), save_weights_only=True,
        save_freq=1)
    reduce = kcallbacks.ReduceLROnPlateau("loss", patience=0)
    history = fit_digits(digits_model(), 2, [reduce, by_epoch, by_batch], n=512,
                         validation_split=0.5).history

    expected = [
        f"{e + 1:02d}-{history['accuracy'][e]:.3f}-{history['val_loss'][e]:.3f}-"
        f"{history['learning_rate'][e]:.0e}.weights.h5" for e in range(2)
    ]
    assert names(tmp_path / "e") == expected
    assert [n.split("-")[:2] for n in names(tmp_path / "b")] == [
        ["1", "1"], ["1", "2"], ["2", "1"], ["2", "2"]]


class RenamedLogs(keras.Model):
    """A model whose train_step reports its own key: only the first step
    can tell what the logs hold."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(10)

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        logs = super().train_step(data)
        return {"mine": logs["loss"]}


@pytest.mark.parametrize("field, fails", [("mine", False), ("loss", True)])
def test_custom_train_step_is_checked_at_the_first_batch(tmp_path, field, fails):
    model = RenamedLogs()
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    count = CountBatches()
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / ("{epoch}-{%s:.3f}.weights.h5" % field)), save_weights_only=True)
    if fails:
        with pytest.raises(ValueError, match=r"uses \{loss\}.*Available: epoch, mine"):
            fit_digits(model, 2, [checkpoint, count])
        assert count.batches == 0 and os.listdir(tmp_path) == []
    else:
        fit_digits(model, 2, [checkpoint, count])
        assert len(os.listdir(tmp_path)) == 2


def two_output_model():
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = {"a": keras.layers.Dense(10, name="a")(hidden),
               "b": keras.layers.Dense(10, name="b")(hidden)}
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"a": loss, "b": loss})
    return model


@pytest.mark.parametrize("field, fails", [("b_loss", False), ("c_loss", True)])
def test_a_multi_output_model_is_checked_at_the_first_batch(tmp_path, field, fails):
    x, y = digits_data(256)
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / ("{epoch}-{%s:.3f}.weights.h5" % field)), save_weights_only=True)
    count = CountBatches()

    def fit():
        two_output_model().fit(x, {"a": y, "b": y}, epochs=2, batch_size=128, verbose=0,
                               callbacks=[checkpoint, count])

    if fails:
        with pytest.raises(ValueError, match=r"\{c_loss\}.*Available: a_loss, b_loss, epoch, loss"):
            fit()
        assert count.batches == 0 and os.listdir(tmp_path) == []
    else:
        fit()
        assert len(os.listdir(tmp_path)) == 2


@pytest.mark.all_backends
@pytest.mark.parametrize("async_save", MODES)
def test_max_to_keep_keeps_the_best_with_a_pointer_an_index_and_events(tmp_path, async_save):
    run_dir = tmp_path / "run"
    course = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0]
    record = RecordWeights()
    checkpoint = kcallbacks.ModelCheckpoint(
        str(run_dir / "ckpt" / "{epoch:02d}.weights.h5"), monitor="score", mode="min",
        save_weights_only=True, max_to_keep=2, async_save=async_save,
    )
    fit_digits(digits_model(), 6, [scripted(course), record, checkpoint,
                                   kcallbacks.HistoryLogger(run_dir)])

    ckpt = run_dir / "ckpt"
    assert names(ckpt) == ["04.weights.h5", "05.weights.h5", "best.weights.h5",
                           "checkpoints.json"]
    assert_weights_equal(load_into_fresh_model(ckpt / "best.weights.h5").get_weights(),
                         record.by_epoch[3])
    assert_weights_equal(load_into_fresh_model(ckpt / "05.weights.h5").get_weights(),
                         record.by_epoch[4])
    index = json.loads((ckpt / "checkpoints.json").read_text())
    assert index["best"] == "04.weights.h5" and index["best_path"] == "best.weights.h5"
    assert index["monitor"] == "score" and index["mode"] == "min"
    assert [(c["name"], c["epoch"], c["value"], c["step"]) for c in index["checkpoints"]] == [
        ("04.weights.h5", 3, 1.0, 8), ("05.weights.h5", 4, 2.0, 10)]
    assert [c["name"] for c in checkpoint.kept_checkpoints] == ["04.weights.h5", "05.weights.h5"]

    events = kcallbacks.load_run(run_dir).events
    saved = events[events["type"] == "checkpoint_saved"]
    # Epoch 5's value (6.0) would not be among the two best: not written.
    assert saved["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert saved["path"].tolist() == [f"ckpt/0{e}.weights.h5" for e in range(1, 6)]
    assert saved["step"].tolist() == [2, 4, 6, 8, 10]
    assert saved["value"].tolist() == course[:5]
    assert saved["best"].tolist() == [True, True, False, True, False]
    assert set(saved["monitor"]) == {"score"}
    deleted = events[events["type"] == "checkpoint_deleted"]
    assert deleted["path"].tolist() == ["ckpt/01.weights.h5", "ckpt/03.weights.h5",
                                        "ckpt/02.weights.h5"]


class KerasSaveWeights(keras.callbacks.Callback):
    """Saves with Keras' own save_weights at each epoch end, for comparison."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        self.model.save_weights(os.path.join(self.directory, f"{epoch + 1}.weights.h5"))


def h5_contents(path):
    contents = {}

    def visit(name, item):
        attrs = {k: item.attrs[k] for k in item.attrs}
        if isinstance(item, h5py.Dataset):
            contents[name] = (item.dtype, item.shape, attrs, item[()])
        else:
            contents[name] = ("group", attrs)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return contents


@pytest.mark.all_backends
def test_a_background_save_writes_what_save_weights_writes(tmp_path):
    (tmp_path / "keras").mkdir()
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / "ours" / "{epoch}.weights.h5"), save_weights_only=True, async_save=True)
    model = digits_model()
    fit_digits(model, 3, [checkpoint, KerasSaveWeights(tmp_path / "keras")])

    for epoch in (1, 2, 3):
        ours = h5_contents(tmp_path / "ours" / f"{epoch}.weights.h5")
        theirs = h5_contents(tmp_path / "keras" / f"{epoch}.weights.h5")
        assert ours.keys() == theirs.keys()
        assert any(name.startswith("optimizer/") for name in ours)
        for name, item in theirs.items():
            if item[0] == "group":
                assert ours[name] == item
            else:
                dtype, shape, attrs, value = ours[name]
                assert (dtype, shape, attrs.keys()) == (item[0], item[1], item[2].keys())
                np.testing.assert_array_equal(value, item[3])
    loaded = load_into_fresh_model(tmp_path / "ours" / "3.weights.h5")
    assert_weights_equal(loaded.get_weights(), model.get_weights())
    assert_weights_equal([v.numpy() for v in loaded.optimizer.variables],
                         [v.numpy() for v in model.optimizer.variables])


class LimitFileSize(keras.callbacks.Callback):
    """From the end of epoch `epoch` on, no file of this process may grow
    past `limit` bytes: writes fail with EFBIG, as on a full disk."""

    def __init__(self, epoch, limit):
        super().__init__()
        self.epoch = epoch
        self.limit = limit

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, hard))


@pytest.mark.parametrize("async_save", MODES)
def test_a_failed_write_keeps_the_earlier_checkpoints_and_says_so(tmp_path, async_save):
    record = RecordWeights()
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / "{epoch:02d}.weights.h5"), monitor="score", mode="min",
        save_weights_only=True, max_to_keep=2, async_save=async_save)
    saved_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        with pytest.raises(OSError, match=r"could not write .*02\.weights\.h5: .*File too large"
                                          r".*Earlier checkpoints are intact"):
            fit_digits(digits_model(), 3, [scripted([3.0, 2.0, 1.0]), record,
                                           LimitFileSize(1, 10_000), checkpoint])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved_limit)

    assert names(tmp_path) == ["01.weights.h5", "best.weights.h5", "checkpoints.json"]
    for name in ("01.weights.h5", "best.weights.h5"):
        assert_weights_equal(load_into_fresh_model(tmp_path / name).get_weights(),
                             record.by_epoch[0])
    index = json.loads((tmp_path / "checkpoints.json").read_text())
    assert [c["name"] for c in index["checkpoints"]] == ["01.weights.h5"]
    if not async_save:  # the state moves on only once the file is there
        assert checkpoint.best == 3.0
        assert [c["name"] for c in checkpoint.kept_checkpoints] == ["01.weights.h5"]


def test_an_unwritable_directory_fails_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    count = CountBatches()
    checkpoint = kcallbacks.ModelCheckpoint(
        str(tmp_path / "a_file" / "ckpt" / "{epoch}.weights.h5"), save_weights_only=True)
    with pytest.raises(OSError, match="ModelCheckpoint: cannot write checkpoints to .*a_file"):
        fit_digits(digits_model(), 2, [count, checkpoint])
    assert count.batches == 0


def test_batch_frequency_matches_keras_and_resumes_from_a_state(tmp_path):
    template = "{epoch:02d}-{batch:02d}.weights.h5"
    kwargs = dict(save_weights_only=True, save_freq=3)
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / template), **kwargs)
    ours = kcallbacks.ModelCheckpoint(str(tmp_path / "ours" / template), **kwargs)
    fit_digits(digits_model(), 3, [theirs, ours], batch_size=64)  # 4 batches an epoch
    assert names(tmp_path / "ours") == names(tmp_path / "keras") == [
        "01-03.weights.h5", "02-02.weights.h5", "03-01.weights.h5", "03-04.weights.h5"]

    model = digits_model()
    first = kcallbacks.ModelCheckpoint(str(tmp_path / "resumed" / template), **kwargs)
    fit_digits(model, 2, [first], batch_size=64)
    second = kcallbacks.ModelCheckpoint(str(tmp_path / "resumed" / template), **kwargs)
    second.set_state(json.loads(json.dumps(first.get_state())))
    fit_digits(model, 3, [second], batch_size=64, initial_epoch=2)
    assert names(tmp_path / "resumed") == names(tmp_path / "keras")


def test_max_to_keep_resumes_from_a_state(tmp_path):
    course = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0]
    kwargs = dict(monitor="score", mode="min", save_weights_only=True, max_to_keep=2)

    def checkpoint(directory):
        return kcallbacks.ModelCheckpoint(str(tmp_path / directory / "{epoch}.weights.h5"),
                                          **kwargs)

    fit_digits(digits_model(), 6, [scripted(course), checkpoint("whole")])
    model = digits_model()
    first = checkpoint("resumed")
    fit_digits(model, 3, [scripted(course), first])
    state = json.loads(json.dumps(first.get_state()))
    assert [c["name"] for c in state["checkpoints"]] == ["2.weights.h5", "3.weights.h5"]
    second = checkpoint("resumed")
    second.set_state(state)
    fit_digits(model, 6, [scripted(course), second], initial_epoch=3)

    assert names(tmp_path / "resumed") == names(tmp_path / "whole")
    index = json.loads((tmp_path / "resumed" / "checkpoints.json").read_text())
    assert index == json.loads((tmp_path / "whole" / "checkpoints.json").read_text())

    # A kept file that is gone by the time of the restore is dropped.
    os.remove(tmp_path / "resumed" / "5.weights.h5")
    third = checkpoint("resumed")
    third.set_state(second.get_state())
    assert [c["name"] for c in third.kept_checkpoints] == ["4.weights.h5"]


def _writes_in_progress(directory, min_size=0):
    """Temporary checkpoint files in `directory` of at least `min_size`
    bytes, once an earlier save is complete (its index exists)."""
    if not os.path.exists(os.path.join(directory, "checkpoints.json")):
        return []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".0") and ".tmp-" in entry.name:  # not best/index
            try:
                if entry.stat().st_size >= min_size:
                    found.append(entry.name)
            except FileNotFoundError:  # renamed into place meanwhile
                pass
    return found


def _train_and_kill_when(out, moment):
    """Runs the training script into `out` and SIGKILLs it as soon as
    `moment()` holds, polled every millisecond."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "train_checkpoint.py"), str(out), "1000"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while not moment():
            assert process.poll() is None, "training ended before the moment to kill it"
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.001)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    "mode, min_size",
    [("sync", 0), ("async", 26_000_000)],
    ids=["sync_write_begins", "async_write_half_done"],
)
def test_sigkill_during_a_checkpoint_write_leaves_only_complete_files(tmp_path, mode, min_size):
    out = tmp_path / "out"
    # The script saves each epoch twice, into out/sync and out/async (52 MB
    # files); kill it while a write of the chosen one is in progress.
    _train_and_kill_when(out, lambda: _writes_in_progress(out / mode, min_size))
    assert _writes_in_progress(out / mode), "the kill came after the write finished"

    model = wide_model()
    model.optimizer.build(model.trainable_variables)
    for directory in (out / "sync", out / "async"):
        files = names(directory) if directory.exists() else []
        final = [name for name in files if not name.startswith(".")]
        if directory == out / mode:  # an earlier save was complete
            assert "best.weights.h5" in final and "checkpoints.json" in final
        # The other one may still have been writing its first save.
        for name in final:
            if name.endswith(".weights.h5"):
                model.load_weights(directory / name)  # raises on a partial file
        if "checkpoints.json" in final:
            index = json.loads((directory / "checkpoints.json").read_text())
            assert index["best"] in final
            for entry in index["checkpoints"]:
                model.load_weights(directory / entry["name"])

    # The next fit into the directory clears what the killed write left.
    checkpoint = kcallbacks.ModelCheckpoint(
        str(out / mode / "{epoch:03d}-{loss:.4f}.weights.h5"), monitor="loss",
        save_weights_only=True, max_to_keep=2)
    fit_digits(model, 1, [checkpoint], n=128)
    assert not any(name.startswith(".") for name in os.listdir(out / mode))


def test_image_memory_reused_for_a_smaller_file_holds_exactly_that_file():
    """The checkpoint image's memory outlives each image: a smaller image
    built after a larger one must not carry the larger one's tail."""
    import io

    from kcallbacks._keras_saving import ImageMemory, h5_image

    def fill_with(arrays):
        def fill(store):
            entry = store.make("layers/dense", metadata=None)
            for index, array in enumerate(arrays):
                entry[str(index)] = array
        return fill

    def built(fill, memory):  # memory None: a fresh BytesIO
        return bytes(h5_image(fill, memory))

    rng = np.random.default_rng(0)
    large = [rng.standard_normal((300, 200)).astype("float32") for _ in range(3)]
    small = [rng.standard_normal((10, 7)).astype("float32")]
    memory = ImageMemory()
    for arrays in (large, small, large):
        image = built(fill_with(arrays), memory)
        assert image == built(fill_with(arrays), None)
        with h5py.File(io.BytesIO(image), "r") as f:
            stored = f["layers/dense/vars"]
            assert len(stored) == len(arrays)
            for index, array in enumerate(arrays):
                np.testing.assert_array_equal(stored[str(index)][()], array)

