"""The TensorFlow-only pieces of kcallbacks, kept in one place.

Everything else uses `keras.ops` and plain Python, so that other Keras
backends stay within reach.
"""

import contextlib

import keras


def _tf():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


def replicas_in_sync():
    """How many replicas run this step in sync (1 without a strategy)."""
    tf = _tf()
    if tf is None:
        return 1
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.distribute.get_strategy().num_replicas_in_sync
    return context.num_replicas_in_sync


def write_summed_row(ring, slot, row):
    """Sets `ring[slot] = row`, with `row` summed over the replicas of a
    distribution strategy. `ring` must be created in the strategy's scope
    with aggregation "only_first_replica". One in-place row write per step:
    the cost does not grow with the ring's size.

    Off TensorFlow there is no strategy (one replica). On PyTorch the row is
    copied into the variable's tensor in place, with a tensor index (no
    host read of `slot`). On JAX the write is an update of the stateless
    scope the train step runs in (`dynamic_update_slice`, done in place by
    XLA on the donated state)."""
    tf = _tf()
    if tf is None:
        if keras.backend.backend() == "torch":
            import torch

            with torch.no_grad():
                index = keras.ops.reshape(slot, (1,)).to(torch.long)
                ring.value.index_copy_(0, index, keras.ops.expand_dims(row, 0))
            return
        ring.assign(keras.ops.slice_update(ring.value, [slot, 0], keras.ops.expand_dims(row, 0)))
        return
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        row = context.all_reduce("sum", row)
    ring.value.scatter_update(tf.IndexedSlices(tf.expand_dims(row, 0), tf.reshape(slot, (1,))))


def variable_scope(model):
    """The scope new variables for `model`'s training must be created in."""
    strategy = getattr(model, "distribute_strategy", None)
    if _tf() is None or strategy is None:
        return contextlib.nullcontext()
    return strategy.scope()


def distribution(model):
    """The model's distribution strategy as a dict: class, replicas in sync,
    and, when it has a cluster resolver, this task's type and index and
    the number of workers. None without TensorFlow."""
    tf = _tf()
    if tf is None:
        return None
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    default = strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()
    info = {
        # None: TensorFlow's default strategy, i.e. no distribution at all.
        "strategy": None if default else type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": 1,
    }
    resolver = getattr(strategy.extended, "_cluster_resolver", None) or getattr(
        strategy, "cluster_resolver", None
    )
    if resolver is not None and getattr(resolver, "task_type", None):
        cluster = resolver.cluster_spec().as_dict()
        info.update(
            task_type=resolver.task_type,
            task_id=int(resolver.task_id or 0),
            workers=len(cluster.get("worker", [])) + len(cluster.get("chief", [])),
            has_chief="chief" in cluster,
        )
    return info
