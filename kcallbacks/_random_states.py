"""Every global random generator a fit may draw from: its state, and putting
it back. Backend-specific and private-API code for random states lives here.

`capture()` returns `{name: state}`, each state made of JSON-safe values,
tuples and numpy arrays (`snapshots.put_random_states` stores that);
`restore(states)` puts back the generators named in `states` and leaves the
others alone (an older snapshot has only "python" and "numpy").

| name | generator | who draws from it |
|---|---|---|
| `python` | `random.getstate()` | Python code; a `SeedGenerator()` made without a seed takes its seed from it |
| `numpy` | `np.random.get_state()` | NumPy code; array shuffling on JAX and PyTorch |
| `keras` | Keras' global `SeedGenerator` (None: not made yet) | `keras.random.*` ops called with `seed=None` |
| `torch` | `torch.get_rng_state()` | PyTorch: an unseeded `Dropout`, `DataLoader` shuffling and seeds |
| `torch_cuda` | `torch.cuda.get_rng_state_all()`, once CUDA is initialized | the same on CUDA devices |
| `tensorflow` | TensorFlow's global `tf.random.Generator` | `tf.random.get_global_generator()` users |

`torch` and `tensorflow` are captured only when that framework is already
imported (nothing is imported for the sake of a snapshot), and
`tensorflow` only once its global generator exists.

What cannot be restored: TensorFlow's op-level random state. Stateful ops
such as `tf.random.uniform`, `tf.random.shuffle` and `tf.data`'s `shuffle`
without an explicit seed take their seed from the global seed
(`tf.random.set_seed`) and a per-graph op counter, and each kernel keeps its
own position inside the runtime; TensorFlow exposes none of it. Keras' own
random ops are stateless (their state is a `SeedGenerator` variable, saved
with the model), so this only concerns code calling TensorFlow's stateful
ops directly, and `shuffle=True` on arrays with the TensorFlow backend.
"""

import random
import sys
import warnings

import numpy as np

# Keras' global SeedGenerator: keras/src/random/seed_generator.py keeps it
# in Keras' (thread-local) global state under this attribute.
_KERAS_GLOBAL_SEED_GENERATOR = "global_seed_generator"


def capture():
    """{name: state} of every global generator this process has."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "keras": _keras_state(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        states["torch"] = torch.get_rng_state().numpy()
        # Not made to initialize CUDA: until then its generators have drawn
        # nothing, and a new process starts them from the same seeds.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["torch_cuda"] = [s.numpy() for s in torch.cuda.get_rng_state_all()]
    tensorflow = _tensorflow_state()
    if tensorflow is not None:
        states["tensorflow"] = tensorflow
    return states


def restore(states):
    """Puts back every generator named in `states` (from `capture()`)."""
    for name, state in states.items():
        setter = _SETTERS.get(name)
        if setter is None:
            warnings.warn(
                f"BackupAndRestore: the backup holds the state of an unknown random "
                f"generator {name!r}; it is not restored", stacklevel=3,
            )
            continue
        setter(state)


# --- Python and NumPy ----------------------------------------------------------


def _set_python(state):
    random.setstate(state)


def _set_numpy(state):
    np.random.set_state(state)


# --- Keras' global SeedGenerator ---------------------------------------------


def _keras_global_state():
    from keras.src.backend.common import global_state

    return global_state


def _keras_state():
    generator = _keras_global_state().get_global_attribute(_KERAS_GLOBAL_SEED_GENERATOR)
    if generator is None:
        return None
    import keras

    return keras.ops.convert_to_numpy(generator.state.value)


def _set_keras(state):
    global_state = _keras_global_state()
    if state is None:
        # It did not exist yet: Keras makes it when first needed, seeded from
        # Python's random state, which is restored too.
        global_state.set_global_attribute(_KERAS_GLOBAL_SEED_GENERATOR, None)
        return
    generator = global_state.get_global_attribute(_KERAS_GLOBAL_SEED_GENERATOR)
    if generator is None:
        from keras.src.random.seed_generator import SeedGenerator

        # A seed, so that making it draws nothing from Python's random state;
        # then it is as Keras makes it (unseeded), with the saved state.
        generator = SeedGenerator(seed=0)
        generator._initial_seed = None
        global_state.set_global_attribute(_KERAS_GLOBAL_SEED_GENERATOR, generator)
    generator.state.assign(np.asarray(state))


# --- PyTorch --------------------------------------------------------------------


def _import_torch(what):
    try:
        import torch
    except ImportError:
        warnings.warn(
            f"BackupAndRestore: the backup holds PyTorch's {what} random state, but "
            "PyTorch cannot be imported here; it is not restored", stacklevel=4,
        )
        return None
    return torch


def _set_torch(state):
    torch = _import_torch("CPU")
    if torch is not None:
        torch.set_rng_state(torch.from_numpy(np.array(state, dtype=np.uint8)))


def _set_torch_cuda(states):
    torch = _import_torch("CUDA")
    if torch is None:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count != len(states):
        warnings.warn(
            f"BackupAndRestore: the backup holds the random states of {len(states)} "
            f"CUDA devices, this process has {count}; restored for the first "
            f"{min(count, len(states))}", stacklevel=3,
        )
    for device, state in enumerate(states[:count]):
        torch.cuda.set_rng_state(torch.from_numpy(np.array(state, dtype=np.uint8)), device)


# --- TensorFlow's global tf.random.Generator ---------------------------------


def _tensorflow_generator():
    """TensorFlow's global generator if this process made one, else None.
    `tf.random.get_global_generator()` would make one (and raises under op
    determinism), so this reads TensorFlow's private module variable."""
    module = sys.modules.get("tensorflow.python.ops.stateful_random_ops")
    return getattr(module, "global_generator", None)


def _tensorflow_state():
    generator = _tensorflow_generator()
    if generator is None:
        return None
    return {"algorithm": int(generator.algorithm), "state": generator.state.numpy()}


def _set_tensorflow(state):
    try:
        import tensorflow as tf
    except ImportError:
        warnings.warn(
            "BackupAndRestore: the backup holds TensorFlow's global random generator, "
            "but TensorFlow cannot be imported here; it is not restored", stacklevel=3,
        )
        return
    generator = _tensorflow_generator()
    saved = np.asarray(state["state"])
    if generator is not None and int(generator.algorithm) == state["algorithm"]:
        # In place: tf.functions that captured the generator see the state.
        generator.reset(saved)
        return
    with tf.init_scope():
        tf.random.set_global_generator(tf.random.Generator.from_state(saved, state["algorithm"]))


_SETTERS = {
    "python": _set_python,
    "numpy": _set_numpy,
    "keras": _set_keras,
    "torch": _set_torch,
    "torch_cuda": _set_torch_cuda,
    "tensorflow": _set_tensorflow,
}
