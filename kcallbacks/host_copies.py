"""Host copies of variables, taken into buffers that are reused.

A checkpoint or snapshot written in the background needs the variables'
values as they were at the save, while training goes on: a copy in host
memory. Copying into memory that is already mapped is several times faster
than allocating it afresh, so each saver keeps its buffers from one save to
the next (and must not copy again while a write of the previous copies is in
flight).
"""

import keras
import numpy as np


class HostBuffers:
    """`copy(key, value)`: a host copy of `value` in the buffer kept under
    `key`, made anew only when the shape or dtype changes."""

    def __init__(self):
        self._buffers = {}

    def copy(self, key, value):
        source = host_array(value)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            buffer = np.empty_like(source)
            self._buffers[key] = buffer
        np.copyto(buffer, source)
        return buffer


def host_array(value):
    """A variable's (or tensor's) current value as a numpy array, without a
    copy where the backend allows: on TensorFlow, a view of the variable's
    buffer that is valid only until the variable next changes. Copy it before
    training goes on."""
    if isinstance(value, keras.Variable):
        value = value.value
    read_value = getattr(value, "read_value", None)  # a TensorFlow variable
    if callable(read_value):
        value = read_value()
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        return keras.ops.convert_to_numpy(value)
