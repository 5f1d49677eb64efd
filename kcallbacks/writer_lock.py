"""One writer per run directory, between processes: an operating-system lock.

`writer_role` picks the one writer inside a distributed job. Between
independent processes (a job submitted twice, two notebook kernels, a
script re-run while the first run still goes) nothing else stops two
writers from merging their runs. So a process that writes a directory of
the run format (a run directory, a backup directory, a checkpoint
directory) first takes an exclusive `fcntl.flock` on `.writer.lock` inside
it, and holds it until its fit ends. Another process that asks for it is
refused at once with `RunDirectoryLockedError`, which names the holder
(process id, host, since when) and what to do.

The kernel drops the lock when the holder dies, however it dies (SIGKILL,
a crash, a power loss ends every lock), so a re-run is never blocked by a
dead holder: the file's contents say who held it last, not who holds it.
Readers (`load_run`, `kreport`) never take it. In one process the lock is
taken once per directory (a lock file opened twice by one process would
refuse itself), held by the fit running, and passed to the next fit.

What it guarantees depends on the filesystem: see the README ("One
writer"). Imports no Keras.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import warnings

from kcallbacks.run_format import WRITER_LOCK, RunDirectoryError, utc_now

# directory -> [open lock file (None where the filesystem has no locks),
# the fit that holds it]
_held = {}
# What flock fails with where a filesystem does not lock.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class RunDirectoryLockedError(RunDirectoryError):
    """Another process writes this directory now."""


def acquire(directory, owner, what="run directory"):
    """Takes the writer lock of `directory` (made if missing) for `owner`,
    an object standing for the fit. A lock this process holds already
    passes to `owner`: this process is the one writer, and a fit that
    ended by an exception (no `on_train_end`) leaves its locks to the next.
    Raises `RunDirectoryLockedError` when another process holds it."""
    directory = os.path.abspath(os.fspath(directory))
    held = _held.get(directory)
    if held is not None:
        held[1] = owner
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WRITER_LOCK)
    lock_file = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = _holder_text(lock_file.read())
        lock_file.close()
        raise RunDirectoryLockedError(
            f"{directory}: this {what} is being written by {holder}; wait for that "
            "fit to end, or write to another directory"
        ) from None
    except OSError as error:
        lock_file.close()
        if error.errno not in _NO_LOCKING:
            raise RunDirectoryError(
                f"{directory}: cannot lock the {what} for writing ({error.strerror or error})"
            ) from None
        # A filesystem without locks (some FUSE mounts, Lustre without
        # `-o flock`): training goes on, unguarded, and says so.
        warnings.warn(
            f"{directory}: this filesystem cannot lock the {what} "
            f"({error.strerror or error}); nothing stops a second process from "
            "writing it too", stacklevel=3,
        )
        _held[directory] = [None, owner]
        return
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(json.dumps({
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": utc_now(),
        "command": " ".join(sys.argv).replace("\n", " ")[:200],
    }))
    lock_file.flush()
    _held[directory] = [lock_file, owner]


def release(owner):
    """Unlocks every directory `owner` holds."""
    for directory, (lock_file, holder) in list(_held.items()):
        if holder is owner:
            del _held[directory]
            if lock_file is not None:
                lock_file.close()  # closing the file releases the flock


def holds(directory):
    """Whether this process holds `directory`'s writer lock."""
    return os.path.abspath(os.fspath(directory)) in _held


def is_written_now(directory):
    """Whether some process holds `directory`'s writer lock now: True,
    False, or None where this cannot be seen. Looks the lock file's inode up
    in Linux's `/proc/locks` (the locks of every process on this host), so
    it takes no lock itself and never stands in a writer's way. A writer on
    another host (a shared filesystem) is not seen there: None."""
    try:
        inode = os.stat(os.path.join(os.fspath(directory), WRITER_LOCK)).st_ino
    except OSError:
        return False  # never locked: no writer has started
    try:
        with open("/proc/locks", encoding="ascii") as f:
            table = f.read()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:131074 0 EOF"; a waiter's line
        # has a "->" field first.
        if "->" in fields:
            continue
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return None if _maybe_remote(directory) else False


def _maybe_remote(directory):
    """Whether `directory` may be on a filesystem shared between hosts,
    whose other hosts' locks `/proc/locks` does not list."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return True
    path = os.path.realpath(directory)
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    shared = ("nfs", "nfs4", "cifs", "smb3", "ceph", "fuse", "lustre", "gpfs", "9p")
    return best is None or best[1].split(".")[0] in shared


def _holder_text(contents):
    try:
        holder = json.loads(contents)
        return (f"process {holder['pid']} on {holder['host']} since {holder['started']} "
                f"({holder.get('command', '')})")
    except (ValueError, KeyError, TypeError):
        return "another process"
