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

from kcallbacks._keras_fit import defined_by_keras
from kcallbacks.host_copies import HostBuffers, host_array


def h5_image(fill, memory=None):
    """The bytes of a `.weights.h5` file that `fill(store)` fills, built in
    memory with Keras' own `H5IOStore`, in `memory` (an `ImageMemory`) when
    given.

    Building in memory and then writing the bytes with plain file I/O keeps
    HDF5 away from the disk: when a write fails there (a full disk), HDF5
    can crash the process on close (h5py issue 914), where Python raises a
    clean OSError.
    """
    buffer = io.BytesIO() if memory is None else memory.reopen()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        fill(store)
    finally:
        store.close()
    return buffer.getbuffer()


class ImageMemory(io.BytesIO):
    """An in-memory file whose storage is kept from one image to the next.

    Writing a large image into fresh memory costs mostly its page faults
    (about 0.2 s for 300 MB here); into memory already mapped, a tenth of
    that. A `BytesIO` (the type `H5IOStore` takes) whose methods h5py's
    file-object driver calls (seek, tell, readinto, read, write, truncate,
    flush) work on a numpy byte array that only grows (numpy copies at
    memory speed, `bytearray` slices several times slower). `reopen()`
    empties the file, not the memory; `getbuffer()` is valid until then.
    """

    def __init__(self):
        super().__init__()
        self._memory = np.zeros(0, np.uint8)
        self._size = 0
        self._position = 0

    def reopen(self):
        self._size = self._position = 0
        return self

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def tell(self):
        return self._position

    def readinto(self, target):
        target = np.frombuffer(target, np.uint8)
        count = max(0, min(target.size, self._size - self._position))
        target[:count] = self._memory[self._position:self._position + count]
        self._position += count
        return count

    def read(self, size=-1):
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        data = self._memory[self._position:end].tobytes()
        self._position = max(self._position, end)
        return data

    def write(self, data):
        data = np.frombuffer(data, np.uint8)
        end = self._position + data.size
        self._extend(end)
        self._memory[self._size:self._position] = 0  # a gap reads as zeros
        self._memory[self._position:end] = data
        self._position = end
        self._size = max(self._size, end)
        return data.size

    def truncate(self, size=None):
        size = self._position if size is None else size
        self._extend(size)
        self._memory[self._size:size] = 0
        self._size = size
        return size

    def _extend(self, size):
        if size > self._memory.size:
            grown = np.zeros(max(size, 2 * self._memory.size), np.uint8)
            grown[:self._size] = self._memory[:self._size]
            self._memory = grown

    def flush(self):
        pass

    def getbuffer(self):
        return memoryview(self._memory[:self._size])


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
    `save_weights`' layout, in memory that is also reused: an image is valid
    until the next `image()`.
    """

    def __init__(self):
        self._buffers = HostBuffers()
        self._image_memory = ImageMemory()
        self._layout = []  # (path, metadata, {key: value}) as the traversal gave them
        self._fingerprint = None
        self.entries = []  # the same, with host copies of the values

    def take(self, model):
        self._refresh_layout(model)
        self.entries = [
            (path, metadata,
             {key: self._buffers.copy((path, key), value) for key, value in values.items()})
            for path, metadata, values in self._layout
        ]

    def image_now(self, model):
        """The image of `model`'s current values built straight from them,
        with no host copies first: for a save that is written before
        training goes on (valid until the next `image()`)."""
        self._refresh_layout(model)
        self.entries = [
            (path, metadata, {key: host_array(value) for key, value in values.items()})
            for path, metadata, values in self._layout
        ]
        try:
            return self.image()
        finally:
            self.entries = []  # views of the variables: not to be kept

    def _refresh_layout(self, model):
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

    def image(self):
        return h5_image(self._replay, self._image_memory)

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
