"""Which process writes the run directory: one writer per run.

A single process is the writer. In a multi-process job only the chief
writes; every other process gets a private scratch directory for what it
would have written, removed when it exits. Every write path of the run
format goes through `writable_path`. Imports no Keras.
"""

import atexit
import json
import os
import shutil
import tempfile

from kcallbacks.run_format import RunDirectoryError

_chief_override = None
_scratch_root = None


def set_chief(is_chief_process):
    """Overrides what `is_chief` decides (`None` goes back to TF_CONFIG).
    Set from a distribution strategy's cluster resolver when there is one."""
    global _chief_override
    _chief_override = is_chief_process


def is_chief():
    """Whether this process writes the run's files.

    A single process is the chief. In a multi-worker job, TF_CONFIG says:
    the `chief` task, or worker 0 when the cluster has no chief. Other tasks
    (workers, evaluators) write only to a private scratch directory. At
    train begin `run_callback.sync_writer_role` overrides this from what the
    fit knows: a TensorFlow strategy's cluster resolver, or under JAX with
    several processes, `jax.process_index() == 0`.
    """
    if _chief_override is not None:
        return _chief_override
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        config = json.loads(raw)
        task = config.get("task") or {}
        cluster = config.get("cluster") or {}
        task_type, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as error:
        raise RunDirectoryError(f"TF_CONFIG is not valid JSON of a cluster ({error})") from None
    if not task_type or task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


def writable_path(path):
    """Where this process writes `path`: itself on the chief, else the same
    path under a private scratch directory removed when the process exits."""
    if is_chief():
        return os.fspath(path)
    global _scratch_root
    if _scratch_root is None:
        _scratch_root = tempfile.mkdtemp(prefix="kcallbacks-non-chief-")
        atexit.register(shutil.rmtree, _scratch_root, True)
    path = os.path.abspath(os.fspath(path))
    if path.startswith(_scratch_root + os.sep):
        return path
    return os.path.join(_scratch_root, path.lstrip(os.sep))
