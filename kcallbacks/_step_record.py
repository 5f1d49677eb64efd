"""BatchLossTracker's write inside the train step, in each backend's own
few operations.

The step writes at `count`, the number of steps since the host last read
the ring, and counts itself: `ring[count] = ...; count += 1`. The host
reads the rows and sets `count` back to 0 between two train calls, so no
modulo is needed and the step's global number is the host's business.

Two layouts:

- `loss_writer`, for Keras' own `train_step`: its loss tracker is handed
  each step's unscaled loss and batch size, already computed, so the step
  writes the loss alone (3 operations on TensorFlow and JAX, 2 on PyTorch),
  plus the size where the host cannot know it (one more).
- `record_row`, for a custom `train_step`, named metrics or several
  replicas: a row `(loss x size, size, metric x size, ...)`, summed over
  replicas.

Each is written per backend rather than through `keras.ops`, whose portable
forms cost operations here (a row write needs reshapes, a batch size read
from a tensor's shape is three graph ops on TensorFlow even when the shape
is static). tests/test_step_ops.py counts what each adds.
"""

import keras
import numpy as np


def counter_dtype():
    """The step counter's dtype: the index type each backend's write takes
    without a conversion (unsigned on JAX, which adds a wrap-around for
    negative signed indices)."""
    return {"tensorflow": "int32", "jax": "uint32"}.get(keras.backend.backend(), "int64")


def counter_shape():
    """PyTorch indexes with a 1-element tensor: a 0-d one is read on the host."""
    return (1,) if keras.backend.backend() == "torch" else ()


def loss_writer(state, with_size):
    """`write(loss, size)`, which writes the step's loss (a scalar tensor)
    into `state.ring`, and its batch size into `state.sizes` if `with_size`.
    Chosen once per fit: on PyTorch it runs at every step."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return lambda loss, size: _loss_tensorflow(state, loss, size if with_size else None)
    if backend == "jax":
        return lambda loss, size: _loss_jax(state, loss, size if with_size else None)
    return _torch_loss_writer(state)


def _loss_tensorflow(state, loss, size):
    import tensorflow as tf

    counter = state.count.value
    # Read, then count: TensorFlow orders the two in program order (one
    # resource). A scalar index writes one cell in place: no reshapes.
    index = tf.convert_to_tensor(counter)
    counter.assign_add(1)
    state.ring.value.scatter_update(tf.IndexedSlices(_float32(loss), index))
    if size is not None:
        state.sizes.value.scatter_update(tf.IndexedSlices(tf.cast(size, tf.int32), index))


def _loss_jax(state, loss, size):
    from jax import lax

    index = state.count.value
    state.count.assign(index + np.uint32(1))
    state.ring.assign(lax.dynamic_update_slice(
        state.ring.value, lax.broadcast(_float32(loss), (1,)), (index,)))
    if size is not None:
        # The size is a constant of the trace (JAX traces each batch shape).
        state.sizes.assign(lax.dynamic_update_slice(
            state.sizes.value, np.array([size], np.int32), (index,)))


def _torch_loss_writer(state):
    import torch

    # The variables' tensors, written in place: the same objects all fit.
    counter, ring = state.count.value, state.ring.value

    def write(loss, size):
        with torch.no_grad():
            ring.index_put_((counter,), loss if loss.dtype == torch.float32 else loss.float())
            counter.add_(1)

    return write


def _float32(value):
    # A cast only where the loss is not float32 already (mixed precision).
    if keras.backend.standardize_dtype(value.dtype) == "float32":
        return value
    return keras.ops.cast(value, "float32")


def record_row(state, loss, batch, metric_values=()):
    """Writes the step's row into `state.ring`: `loss` and `metric_values`
    are scalar tensors of this step, `batch` a tensor whose first dimension
    is the batch size."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _row_tensorflow(state, loss, batch, metric_values)
    elif backend == "jax":
        _row_jax(state, loss, batch, metric_values)
    else:
        _row_torch(state, loss, batch, metric_values)


def _static_size(batch):
    """The batch size when the trace knows it (a Python float), else None."""
    size = batch.shape[0]
    return None if size is None else float(size)


def _row_tensorflow(state, loss, batch, metric_values):
    import tensorflow as tf

    counter, ring = state.count.value, state.ring.value
    # Once per step whatever the number of replicas (the counter's
    # aggregation is "only_first_replica").
    index = tf.convert_to_tensor(counter)
    counter.assign_add(1)
    size = _static_size(batch)
    if size is None:
        size = tf.cast(tf.shape(batch)[0], tf.float32)
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    values = [tf.cast(v, tf.float32) for v in (loss, *metric_values)]
    if replicas > 1:
        # compute_loss's value is scaled by 1/replicas for the gradient sum;
        # Keras' loss tracker averages the unscaled value weighted by size.
        values[0] = values[0] * replicas
    row = tf.stack([values[0] * size, size] + [v * size for v in values[1:]])
    if replicas > 1:
        row = context.all_reduce("sum", row)
    ring.scatter_update(tf.IndexedSlices(row, index))


def _row_jax(state, loss, batch, metric_values):
    from jax import lax
    from jax import numpy as jnp

    index = state.count.value
    state.count.assign(index + np.uint32(1))
    size = np.float32(batch.shape[0])
    cells = [lax.broadcast(v.astype(jnp.float32) * size, (1, 1)) for v in (loss, *metric_values)]
    row = lax.concatenate([cells[0], np.full((1, 1), size, np.float32), *cells[1:]], 1)
    state.ring.assign(lax.dynamic_update_slice(state.ring.value, row, (index, np.uint32(0))))


def _row_torch(state, loss, batch, metric_values):
    import torch

    with torch.no_grad():
        counter, ring = state.count.value, state.ring.value
        values = torch.stack([loss, torch.ones_like(loss), *metric_values]).float()
        ring.index_put_((counter,), (values * float(batch.shape[0])).view(1, -1))
        counter.add_(1)
