"""The TensorFlow-only pieces of kcallbacks, kept in one place.

Everything else uses `keras.ops` and plain Python, so that other Keras
backends stay within reach.
"""

import keras


def skip_batches(model, batches, on_first_batch):
    """Makes the next `batches` batches of this epoch pass without training.

    Used for a mid-epoch resume: the data iterator must move past the batches
    the interrupted run already trained on. The model's train function is
    swapped, for those calls only, for one that draws the batches from the
    iterator and returns the current metrics. `on_first_batch(data)` gets the
    first batch drawn (to build metrics that are built lazily).
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
                on_first_batch(data)
            remaining -= 1
        if remaining <= 0:
            model.train_function = trained
        return model.get_metrics_result()

    model.train_function = pass_over_trained_batches
