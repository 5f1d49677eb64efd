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
