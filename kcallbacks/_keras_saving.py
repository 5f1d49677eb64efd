"""What kcallbacks needs from Keras' saving internals, kept in one place.

Checkpoints must have exactly the layout `model.save_weights` gives them
(or, under Keras 2's `.h5` / `.hdf5` weights names, the layout Keras 3 still
loads from those), but be built in host memory (for atomic, background and
full-disk-safe writes). That needs Keras' weights traversal and HDF5 writers,
which are not public API: they are reached here only, so a Keras release that moves them
breaks this module alone. A test compares the files with Keras' own.
"""

import io

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format
from keras.src.saving import saving_lib

from kcallbacks import _tensorflow
from kcallbacks._keras_fit import defined_by_keras


def h5_image(fill):
    """The bytes of a `.weights.h5` file that `fill(store)` fills, built in
    memory with Keras' own `H5IOStore`.

    Building in memory and then writing the bytes with plain file I/O keeps
    HDF5 away from the disk: when a write fails there (a full disk), HDF5
    can crash the process on close (h5py issue 914), where Python raises a
    clean OSError.
    """
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        fill(store)
    finally:
        store.close()
    return buffer.getbuffer()


def weights_image(model):
    """What `model.save_weights` writes, as bytes: the same traversal
    (`saving_lib._save_state`, which `save_weights` runs) into memory."""
    return h5_image(lambda store: saving_lib._save_state(model, store, None, "", set()))


def _variables_fingerprint(model):
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + list(getattr(optimizer, "variables", []))
    return tuple(id(v) for v in variables)


def _optimizer_variables(model, metadata, values):
    """Keras' optimizer saves copies of its variables (`variable.numpy()`,
    allocated afresh each time); for the model's own optimizer, put the
    variables themselves in their place, so later snapshots copy them once,
    into reused buffers, without the traversal."""
    optimizer = getattr(model, "optimizer", None)
    if (
        optimizer is None
        or not metadata
        or metadata.get("name") != optimizer.name
        or not defined_by_keras(optimizer, "save_own_variables")
    ):
        return values
    variables = optimizer.variables
    if list(values) != [str(i) for i in range(len(variables))]:
        return values
    for value, variable in zip(values.values(), variables):
        if not isinstance(value, (np.ndarray, np.generic)) or value.shape != tuple(variable.shape):
            return values
    return {str(i): variable for i, variable in enumerate(variables)}


class WeightsSnapshot:
    """What `model.save_weights` would write, held in host memory.

    `take(model)` runs Keras' traversal (`saving_lib._save_state`, which
    `save_weights` runs) with a `_Recorder` store, then copies each value it
    was handed into a numpy buffer. The traversal's result is kept while the
    model's variables stay the same objects, so later snapshots only copy;
    and the buffers are reused, since copying into memory that is already
    mapped is several times faster than allocating it afresh. `image()`
    replays the entries into Keras' own `H5IOStore`, so the file has exactly
    `save_weights`' layout.
    """

    def __init__(self):
        self._buffers = {}
        self._layout = []  # (path, metadata, {key: value}) as the traversal gave them
        self._fingerprint = None
        self.entries = []  # the same, with host copies of the values

    def take(self, model):
        fingerprint = _variables_fingerprint(model)
        if fingerprint != self._fingerprint:
            recorder = _Recorder()
            saving_lib._save_state(model, recorder, None, "", set())
            self._layout = [
                (path, metadata, _optimizer_variables(model, metadata, values))
                for path, metadata, values in recorder.layout
            ]
            # Values that are not variables (arrays a layer computes when
            # saved) must be asked for again each time.
            reusable = all(
                isinstance(value, keras.Variable)
                for _, _, values in self._layout for value in values.values()
            )
            self._fingerprint = fingerprint if reusable else None
        self.entries = [
            (path, metadata, {key: self._copy(path, key, value) for key, value in values.items()})
            for path, metadata, values in self._layout
        ]

    def _copy(self, path, key, value):
        source = _tensorflow.host_array(value)
        buffer = self._buffers.get((path, key))
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            buffer = np.empty_like(source)
            self._buffers[(path, key)] = buffer
        np.copyto(buffer, source)
        return buffer

    def image(self):
        return h5_image(self._replay)

    def _replay(self, store):
        for entry_path, metadata, values in self.entries:
            if metadata:
                entry = store.make(entry_path, metadata=metadata)
            else:
                entry = store.make(entry_path)
            for key, value in values.items():
                entry[key] = value


class _Recorder(saving_lib.H5IOStore):
    """The store `WeightsSnapshot.take` hands to Keras' traversal (which
    accepts only Keras' store classes): it opens no file and only notes what
    it is given, where."""

    def __init__(self):
        self.layout = []

    def __bool__(self):
        return True

    def make(self, path, metadata=None):
        self.layout.append((path, metadata, {}))
        return self

    def __setitem__(self, key, value):
        self.layout[-1][2][key] = value


def legacy_weights_image(model):
    """What Keras 2's `model.save_weights("x.h5")` wrote, as bytes: the HDF5
    layout Keras 3's `model.load_weights` reads for `.h5` / `.hdf5` paths
    (`legacy_h5_format.load_weights_from_hdf5_group`), built in memory by
    the matching writer for the same reason as `h5_image`."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return buffer.getbuffer()
