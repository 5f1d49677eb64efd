"""The TensorFlow-only pieces of kcallbacks, kept in one place.

Everything else uses `keras.ops` and plain Python, so that other Keras
backends stay within reach.
"""

import contextlib

import keras
import numpy as np


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
    the cost does not grow with the ring's size."""
    tf = _tf()
    if tf is None:
        ring.assign(keras.ops.slice_update(ring, [slot, 0], keras.ops.expand_dims(row, 0)))
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


def skip_batches(model, batches, on_first_batch, after_first_batch):
    """Makes the next `batches` batches of this epoch pass without training.

    Used for a mid-epoch resume: the data iterator must move past the batches
    the interrupted run already trained on. The model's train function is
    swapped, for those calls only, for one that draws the batches from the
    iterator and returns the current metrics. `on_first_batch(data)` gets the
    first batch drawn, in each replica (to build metrics that are built
    lazily); `after_first_batch()` runs next, outside the replicas. Returns a
    function that puts the train function back early.
    Requires a deterministic data order.
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            "BackupAndRestore: resuming in the middle of an epoch is implemented "
            f"for the TensorFlow backend only, not {keras.backend.backend()!r}; "
            "use save_freq='epoch'"
        )
    trained = model.train_function
    steps_per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    remaining = batches
    first = True

    def pass_over_trained_batches(iterator):
        nonlocal remaining, first
        for _ in range(min(steps_per_call, remaining)):
            data = next(iterator)
            if first:
                first = False
                strategy = getattr(model, "distribute_strategy", None)
                if strategy is not None and strategy.num_replicas_in_sync > 1:
                    # A distributed iterator gives per-replica batches.
                    strategy.run(on_first_batch, args=(data,))
                else:
                    on_first_batch(data)
                after_first_batch()
            remaining -= 1
        if remaining <= 0:
            model.train_function = trained
        return model.get_metrics_result()

    model.train_function = pass_over_trained_batches

    def cancel():
        model.train_function = trained

    return cancel


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
