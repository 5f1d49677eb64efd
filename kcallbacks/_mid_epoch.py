"""Mid-epoch resume: passing over the batches an interrupted run already
trained on. This replaces Keras' `model.train_function` for a few calls, so
it depends on each backend's private fit loop (one implementation each):

- TensorFlow (keras/src/backend/tensorflow/trainer.py):
  `logs = self.train_function(iterator)`, up to `steps_per_execution`
  batches drawn per call; metrics are variables.
- JAX (keras/src/backend/jax/trainer.py):
  `logs, state = self.train_function(state, iterator)`; the variables
  (metrics included) travel in `state`, and the model's own variables are
  emptied while the epoch runs.
- PyTorch (keras/src/backend/torch/trainer.py):
  `logs = self.train_function(data)`, `data` a list of one batch already
  drawn from the iterator.

No other backend trains with `fit`.
"""

import keras

BACKENDS = ("tensorflow", "jax", "torch")


def check_supported():
    """Raises at train begin where mid-epoch resume is not implemented."""
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise NotImplementedError(
            f"BackupAndRestore: save_freq=N (mid-epoch backups) is not implemented for "
            f"the {backend!r} backend, only for TensorFlow, JAX and PyTorch; use "
            "save_freq='epoch'"
        )


def skip_batches(model, batches, on_first_batch, after_first_batch):
    """Makes the next `batches` batches of this epoch pass without training.

    The data iterator moves past the batches the interrupted run already
    trained on: the model's train function is swapped, for those calls
    only, for one that draws the batches and returns the current metrics,
    drawing nothing from any random generator. `on_first_batch(data)` gets
    the first batch drawn, in each replica (to build metrics that are built
    lazily); `after_first_batch()` runs next, outside the replicas (to
    assign the saved metric values). Returns a function that puts the train
    function back early. Requires a deterministic data order.
    """
    check_supported()
    skip = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}[keras.backend.backend()]
    trained = model.train_function
    skipper = _Skipper(model, trained, batches, on_first_batch, after_first_batch)
    model.train_function = skip(skipper)

    def cancel():
        model.train_function = trained

    return cancel


class _Skipper:
    """What the three backends share: counting the batches down, the first
    batch's hooks, and putting the train function back when done."""

    def __init__(self, model, trained, batches, on_first_batch, after_first_batch):
        self.model = model
        self.trained = trained
        self.remaining = batches
        self.first = True
        self.on_first_batch = on_first_batch
        self.after_first_batch = after_first_batch
        self.steps_per_call = int(getattr(model, "steps_per_execution", 1) or 1)

    def batches_this_call(self):
        return min(self.steps_per_call, self.remaining)

    def drawn(self, data, run_in_replicas=None):
        """One batch drawn: the hooks for the first one."""
        if self.first:
            self.first = False
            if run_in_replicas is not None:
                run_in_replicas(self.on_first_batch, data)
            else:
                self.on_first_batch(data)
            self.after_first_batch()
        self.remaining -= 1

    def call_done(self):
        if self.remaining <= 0:
            self.model.train_function = self.trained


def _tensorflow(skipper):
    model = skipper.model

    def run_in_replicas(function, data):
        strategy = getattr(model, "distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            # A distributed iterator gives per-replica batches.
            strategy.run(function, args=(data,))
        else:
            function(data)

    def pass_over_trained_batches(iterator):
        for _ in range(skipper.batches_this_call()):
            skipper.drawn(next(iterator), run_in_replicas)
        skipper.call_done()
        return model.get_metrics_result()

    return pass_over_trained_batches


def _jax(skipper):
    model = skipper.model

    def pass_over_trained_batches(state, iterator):
        # Put the state the fit loop carries back into the model's variables
        # (as Keras' jax_state_sync does), so the hooks and the metric
        # results see it...
        trainable, non_trainable, optimizer_variables, metrics = state
        model._jax_state = {
            "trainable_variables": trainable,
            "non_trainable_variables": non_trainable,
            "optimizer_variables": optimizer_variables,
            "metrics_variables": metrics,
        }
        model._jax_state_synced = False
        model.jax_state_sync()
        for _ in range(skipper.batches_this_call()):
            skipper.drawn(next(iterator))
        logs = model.get_metrics_result()
        skipper.call_done()
        # ...and hand it back, the restored metric values included, emptying
        # the variables again as the fit loop does (the next real train step
        # donates the state's buffers).
        state = model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            optimizer_variables=True,
            metrics_variables=True,
            purge_model_variables=True,
        )
        model._jax_state_synced = False
        return logs, state

    return pass_over_trained_batches


def _torch(skipper):
    import torch

    model = skipper.model

    def pass_over_trained_batches(data):
        with torch.no_grad():
            for batch in data[: skipper.batches_this_call()]:
                skipper.drawn(batch)
        skipper.call_done()
        return model.get_metrics_result()

    return pass_over_trained_batches
