"""The backup snapshot format: one directory per snapshot of a fit's state.

A backup directory holds `snapshot-NNNNNNNN/` directories, each written
atomically (see `durable_io.atomic_directory`) with two files:

- `arrays.bin`: its numpy arrays' raw bytes, back to back, each at an
  offset that is a multiple of 64. They are named `PART|INDEX` (`model|3`,
  `optimizer|0`, `metrics|1`), `callback|KEY|FIELD|INDEX` for arrays in a
  callback's state, and `rng|NAME|INDEX` for arrays in the state of the
  random generator NAME (`rng|numpy|0`, `rng|torch|0`);
- `state.json`: the snapshot's JSON part (position in the fit, signatures of
  the variables, callback states, random states) and, under `arrays`, each
  array's name, dtype, shape and offset in `arrays.bin`.

Raw bytes rather than an `.npz` archive: the arrays go from memory to the
file with no copy and no checksum pass, which on a large model is most of a
snapshot's cost (`benchmarks/fit_overhead.py`). A file shorter than its
index says is refused; the atomic rename already rules out a partial one.

This module owns those names and layouts, and the checks that a snapshot
fits the variables it is loaded into. It takes and gives numpy arrays and
objects with `path`, `shape` and `dtype` (Keras variables); it imports no
Keras. `BackupAndRestore` decides what goes in and when.
"""

import json
import math
import os
import shutil

import numpy as np

from kcallbacks.durable_io import atomic_directory, json_default, write_with_writeback
from kcallbacks.run_format import (
    SNAPSHOT_ARRAYS,
    SNAPSHOT_ARRAYS_NPZ,
    SNAPSHOT_PREFIX,
    SNAPSHOT_STATE,
)
from kcallbacks.writer_role import writable_path

# 1: random states of Python and NumPy only (NumPy's key as `rng|numpy`).
# 2: named random generator states (`put_random_states`).
# 3: arrays in `arrays.bin`, indexed in state.json.
# 4: `fit`, the index of the program's fit the snapshot belongs to, and
#    `optimizers`, the model's other optimizers. All four are read (a
#    snapshot without `fit` belongs to fit 0).
SNAPSHOT_FORMAT = 4

# Where each array starts in `arrays.bin`: aligned for any dtype.
ARRAY_ALIGNMENT = 64

# A callback state's field whose name ends so holds a list of arrays, kept
# in the npz file rather than in JSON (EarlyStopping's `best_weights`).
ARRAYS_FIELD_SUFFIX = "_weights"


class SnapshotMismatchError(ValueError):
    """A backup snapshot does not fit the model or optimizer being trained."""


# --- snapshot directories ----------------------------------------------------


def snapshot_path(backup_dir, sequence):
    return os.path.join(os.fspath(backup_dir), f"{SNAPSHOT_PREFIX}{sequence:08d}")


def list_snapshots(backup_dir):
    """[(sequence, path)] of the complete snapshots, newest first."""
    backup_dir = os.fspath(backup_dir)
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        number = name[len(SNAPSHOT_PREFIX):]
        if name.startswith(SNAPSHOT_PREFIX) and number.isdigit():
            found.append((int(number), os.path.join(backup_dir, name)))
    return sorted(found, reverse=True)


def is_snapshot_name(name):
    """Whether `name` is (or is the temporary of) a snapshot directory."""
    return name.startswith(SNAPSHOT_PREFIX)


def write_snapshot(backup_dir, sequence, state, arrays):
    """Writes one snapshot (a JSON state and named numpy arrays) atomically."""
    with atomic_directory(snapshot_path(backup_dir, sequence)) as tmp_dir:
        with open(os.path.join(tmp_dir, SNAPSHOT_ARRAYS), "wb") as f:
            index = _write_arrays(f, arrays)
        with open(os.path.join(tmp_dir, SNAPSHOT_STATE), "w", encoding="utf-8") as f:
            f.write(json.dumps({**state, "arrays": index}, default=json_default))


def _write_arrays(f, arrays):
    index, offset = [], 0
    for name, array in arrays.items():
        array = np.asarray(array)
        padding = -offset % ARRAY_ALIGNMENT
        f.write(bytes(padding))
        offset += padding
        index.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
                      "offset": offset})
        # A byte view of the array's own memory: written without a copy.
        write_with_writeback(f, np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        offset += array.nbytes
    return index


def read_snapshot(path):
    """(state, arrays) of one snapshot directory; arrays are loaded eagerly."""
    with open(os.path.join(path, SNAPSHOT_STATE), encoding="utf-8") as f:
        state = json.load(f)
    snapshot_format = state.get("format", 1)
    if snapshot_format > SNAPSHOT_FORMAT:
        raise ValueError(
            f"snapshot format {snapshot_format} is newer than this kcallbacks reads "
            f"({SNAPSHOT_FORMAT}); upgrade kcallbacks"
        )
    if snapshot_format < 3:
        with np.load(os.path.join(path, SNAPSHOT_ARRAYS_NPZ), allow_pickle=False) as data:
            return state, {name: data[name] for name in data.files}
    return state, _read_arrays(os.path.join(path, SNAPSHOT_ARRAYS), state.pop("arrays"))


def _read_arrays(path, index):
    data = np.fromfile(path, dtype=np.uint8)
    arrays = {}
    for entry in index:
        dtype = _dtype(entry["dtype"])
        start = entry["offset"]
        end = start + math.prod(entry["shape"]) * dtype.itemsize
        if end > data.size:
            raise ValueError(
                f"{path} is {data.size} bytes, shorter than its index says "
                f"({entry['name']} ends at byte {end})"
            )
        arrays[entry["name"]] = data[start:end].view(dtype).reshape(entry["shape"])
    return arrays


def _dtype(name):
    try:
        return np.dtype(name)
    except TypeError:
        # bfloat16 and float8 types: NumPy knows them once ml_dtypes (a
        # dependency of Keras) is imported.
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def remove_snapshot(path):
    shutil.rmtree(writable_path(path), ignore_errors=True)


def read_state(path):
    """The JSON part of a snapshot, without reading its arrays."""
    with open(os.path.join(path, SNAPSHOT_STATE), encoding="utf-8") as f:
        return json.load(f)


def fit_index(state):
    """The index of the program's fit a snapshot's state belongs to."""
    return int(state.get("fit", 0))


def snapshots_to_keep(found, keep):
    """The snapshots of `found` (`list_snapshots`' list, newest first) to
    keep: the newest `keep`, and the final snapshot of every fit, which a
    re-run of the program restores in place of training that fit again."""
    kept, fits_ended = [], set()
    for rank, (sequence, path) in enumerate(found):
        try:
            state = read_state(path)
        except (OSError, ValueError):
            state = None
        ends_fit = state is not None and state.get("finished") and fit_index(state) not in fits_ended
        if ends_fit:
            fits_ended.add(fit_index(state))
        if rank < keep or ends_fit:
            kept.append((sequence, path))
    return kept


def remove_older_snapshots(backup_dir, keep):
    """Removes the snapshots `snapshots_to_keep` does not keep."""
    found = list_snapshots(backup_dir)
    kept = {path for _, path in snapshots_to_keep(found, keep)}
    for _, path in found:
        if path not in kept:
            remove_snapshot(path)


# --- variables ----------------------------------------------------------------


def put_arrays(arrays, part, values):
    """Stores `values` (numpy arrays, in order) as `part|0`, `part|1`, ..."""
    for index, value in enumerate(values):
        arrays[f"{part}|{index}"] = value


def get_arrays(arrays, part, count):
    """The `count` arrays `put_arrays` stored for `part`, in order."""
    return [arrays[f"{part}|{index}"] for index in range(count)]


def signature(variables):
    """What a snapshot records of variables to check them on restore."""
    return [
        {"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype)} for v in variables
    ]


def check_signature(what, saved, variables, backup_dir):
    """Raises `SnapshotMismatchError` naming the first difference between a
    snapshot's `signature` and `variables`."""
    current = signature(variables)
    if len(saved) != len(current):
        raise SnapshotMismatchError(
            f"BackupAndRestore: the backup in {backup_dir} has {len(saved)} {what} "
            f"variables, this fit has {len(current)}; it was made for another "
            f"{what}. Use another backup_dir"
        )
    for index, (old, new) in enumerate(zip(saved, current)):
        if old["shape"] != new["shape"] or old["dtype"] != new["dtype"]:
            raise SnapshotMismatchError(
                f"BackupAndRestore: {what} variable {index} ({new['path']}) is "
                f"{new['shape']} {new['dtype']} here but {old['shape']} {old['dtype']} "
                f"({old['path']}) in the backup in {backup_dir}"
            )


# --- callback states ----------------------------------------------------------


def split_callback_state(key, state, arrays):
    """The JSON part of a callback's state; its list-of-array fields (names
    ending in `_weights`) move into `arrays`."""
    plain = {}
    for field, value in (state or {}).items():
        if field.endswith(ARRAYS_FIELD_SUFFIX) and isinstance(value, (list, tuple)):
            put_arrays(arrays, f"callback|{key}|{field}", (np.asarray(a) for a in value))
            plain[field] = {"__arrays__": len(value)}
        else:
            plain[field] = value
    return plain


def join_callback_state(key, plain, arrays):
    """The callback state that `split_callback_state` split."""
    joined = {}
    for field, value in plain.items():
        if isinstance(value, dict) and set(value) == {"__arrays__"}:
            joined[field] = get_arrays(arrays, f"callback|{key}|{field}", value["__arrays__"])
        else:
            joined[field] = value
    return joined


# --- random states ------------------------------------------------------------


def put_random_states(arrays, states):
    """The JSON part of named random generator states (`{name: state}`, as
    `_random_states.capture()` gives them); the numpy arrays in them go into
    `arrays` as `rng|NAME|INDEX`. A state may nest tuples, lists and
    str-keyed dicts of JSON values and numpy arrays."""
    saved = {}
    for name, state in states.items():
        count = [0]

        def encode(value, name=name, count=count):
            if isinstance(value, np.ndarray):
                key = f"rng|{name}|{count[0]}"
                count[0] += 1
                arrays[key] = value
                return {"array": key}
            if isinstance(value, tuple):
                return {"tuple": [encode(v) for v in value]}
            if isinstance(value, list):
                return [encode(v) for v in value]
            if isinstance(value, dict):
                return {"dict": {str(k): encode(v) for k, v in value.items()}}
            return _plain(value)

        saved[name] = encode(state)
    return saved


def get_random_states(saved, arrays):
    """`{name: state}` from what `put_random_states` stored. A format-1
    snapshot holds only Python's and NumPy's states, in their own layout."""
    if isinstance(saved.get("numpy"), list):  # format 1
        name, *rest = saved["numpy"]
        return {
            "python": _decode(saved["python"], arrays),
            "numpy": (name, arrays["rng|numpy"], *rest),
        }
    return {name: _decode(value, arrays) for name, value in saved.items()}


def _decode(value, arrays):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if set(value) == {"array"}:
            return arrays[value["array"]]
        if set(value) == {"tuple"}:
            return tuple(_decode(v, arrays) for v in value["tuple"])
        if set(value) == {"dict"}:
            return {k: _decode(v, arrays) for k, v in value["dict"].items()}
        raise ValueError(f"unknown random state entry {sorted(value)}")
    return value


def _plain(value):
    return value.item() if hasattr(value, "item") else value
