"""The JAX-only pieces of kcallbacks, kept in one place."""

import keras


def process_count():
    """How many processes train together (1 off JAX or without
    `jax.distributed`)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()
