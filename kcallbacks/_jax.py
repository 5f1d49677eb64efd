"""The JAX-only pieces of kcallbacks, kept in one place."""

import keras


def process_count():
    """How many processes train together (1 off JAX or without
    `jax.distributed`)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index():
    """This process's index among them (0 off JAX or without
    `jax.distributed`)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


# --- pre-emption under jax.distributed -----------------------------------------
# JAX's distributed runtime has a pre-emption service: `jax.distributed.
# initialize` installs a SIGTERM handler that records a notice in the job's
# key-value store, and `reached_preemption_sync_point(step)`, called by every
# process at every step with the same step ids, turns true on all of them at
# one common step after a notice. The key and its value's format are XLA
# internals (`preemption_notifier.cc`), used here only.
_PREEMPTION_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


def _distributed_state():
    if keras.backend.backend() != "jax":
        return None
    from jax._src import distributed

    state = distributed.global_state
    if state.client is None or getattr(state, "preemption_sync_manager", None) is None:
        return None
    return state


def has_preemption_service():
    """Whether this is a multi-process JAX job with JAX's pre-emption
    service running."""
    return _distributed_state() is not None and process_count() > 1


def announce_preemption():
    """Records a pre-emption notice for the whole job, as JAX's own SIGTERM
    handler does, so that every process reaches the same sync point."""
    import datetime

    moment = datetime.datetime.now(datetime.timezone.utc).isoformat()
    _distributed_state().client.key_value_set(_PREEMPTION_NOTICE_KEY, moment, allow_overwrite=True)


def reached_preemption_sync_point(step):
    """Whether every process is to stop at `step` (see above)."""
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)
