"""BatchLossTracker's write inside the train step, in each backend's own
few operations: `ring[step % capacity] = (loss x size, size, metric x size,
...)`, then `step += 1`.

This runs in every training step, so it is written per backend rather than
through `keras.ops`, whose portable forms cost operations here (`ops.mod`
is a floor modulo with sign fix-ups on JAX, a row write needs reshapes,
a batch size read from a tensor's shape is three graph ops on TensorFlow
even when the shape is static). tests/test_step_ops.py counts what it adds.
"""

import keras
import numpy as np


def record_step(state, loss, batch, metric_values=()):
    """Writes the step's row into `state` (a `_StepRing`): `loss` and
    `metric_values` are scalar tensors of this step, `batch` a tensor whose
    first dimension is the batch size."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _record_tensorflow(state, loss, batch, metric_values)
    elif backend == "jax":
        _record_jax(state, loss, batch, metric_values)
    else:
        _record_torch(state, loss, batch, metric_values)


def _static_size(batch):
    """The batch size when the trace knows it (a Python float), else None."""
    size = batch.shape[0]
    return None if size is None else float(size)


def _record_tensorflow(state, loss, batch, metric_values):
    import tensorflow as tf

    counter, ring = state.step.value, state.ring.value
    # Read, then count: TensorFlow orders the two in program order (one
    # resource); once per step whatever the number of replicas (the
    # counter's aggregation is "only_first_replica").
    step = tf.convert_to_tensor(counter)
    counter.assign_add(1)
    slot = tf.math.floormod(step, ring.shape[0])
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
    # A scalar index writes the row in place: no reshapes.
    ring.scatter_update(tf.IndexedSlices(row, slot))


def _record_jax(state, loss, batch, metric_values):
    from jax import lax
    from jax import numpy as jnp

    step = state.step.value
    state.step.assign(step + np.int32(1))
    # A non-negative step: the plain remainder, not jnp.mod's floor modulo.
    slot = lax.rem(step, np.int32(state.ring.shape[0]))
    # JAX traces each batch shape: the size is a constant of the trace.
    size = np.float32(batch.shape[0])
    # The row as a (1, columns) block at (slot, 0), in place on the donated
    # state; an unsigned index is not wrapped for negative values.
    cells = [lax.broadcast(v.astype(jnp.float32) * size, (1, 1)) for v in (loss, *metric_values)]
    row = lax.concatenate([cells[0], np.full((1, 1), size, np.float32), *cells[1:]], 1)
    state.ring.assign(lax.dynamic_update_slice(
        state.ring.value, row, (slot.astype(jnp.uint32), np.uint32(0))))


def _record_torch(state, loss, batch, metric_values):
    import torch

    with torch.no_grad():
        counter, ring = state.step.value, state.ring.value
        # A Python number as the other operand: no tensor made from it (on a
        # GPU that would be a host-to-device copy at every step).
        slot = torch.remainder(counter, ring.shape[0])
        counter.add_(1)
        values = torch.stack([loss, torch.ones_like(loss), *metric_values]).float()
        # A 1-element index tensor: a 0-d one would be read on the host.
        ring.index_put_((slot.view(1),), (values * float(batch.shape[0])).view(1, -1))
