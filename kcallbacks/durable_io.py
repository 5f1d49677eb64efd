"""Durable file I/O: atomic replaces, durable appends, JSON lines.

Every file of a run directory is written through these functions:
- whole files (the manifest, rewritten tables, checkpoints) are replaced
  atomically: written under a temporary name beside the target, fsynced,
  renamed over the target, and the directory fsynced;
- logs are appended, then flushed and fsynced before the call returns;
- readers tolerate a torn last line, which is what a crash in the middle of
  an append leaves behind.
Paths go through `writer_role.writable_path`, so a process that is not the
run's writer writes into its private scratch directory. Imports no Keras.
"""

import contextlib
import ctypes
import json
import os
import shutil
import sys
import tempfile
import uuid

import numpy as np

from kcallbacks.run_format import TEMPORARY_MARK
from kcallbacks.writer_role import writable_path


def _fsync_directory(path):
    # A rename is durable only once the directory entry itself is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _renamed_into_place(tmp_path, path):
    """Renames `tmp_path` over `path` if the block succeeds, then makes the
    rename durable; removes `tmp_path` if the block (or the rename) fails."""
    try:
        yield
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise
    # POSIX: renaming a hard link onto another link of the same file does
    # nothing and succeeds, leaving the temporary name behind.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _temporary_name(path, suffix=""):
    # Left for the writer to create, so the file gets the usual permissions
    # (mkstemp's are owner-only).
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yields a file object whose content replaces `path` atomically on exit.

    The data goes to a temporary file `.NAME.tmp-XXXXXXXX` in the same
    directory, is fsynced, then renamed over `path`. If the block raises, the
    temporary file is removed and `path` is untouched, so a reader never sees
    a partial file under the final name.
    """
    path = writable_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = _temporary_name(path)
    with _renamed_into_place(tmp_path, path):
        encoding = None if "b" in mode else "utf-8"
        newline = None if "b" in mode else ""
        with open(tmp_path, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


# Bytes written between two requests to start writing them back.
WRITEBACK_CHUNK = 8 * 1024 * 1024


def atomic_write_bytes(path, data):
    """Replaces `path` with `data` (bytes-like) atomically and durably, like
    `atomic_output`, writing it with `write_with_writeback`."""
    with atomic_output(path) as f:
        write_with_writeback(f, data)


def write_with_writeback(f, data):
    """Writes `data` (bytes-like) to the binary file `f`, asking the kernel
    to start writing each chunk back to disk as soon as it is in the page
    cache: the disk works while the next chunks are copied, and the fsync
    that makes the file durable waits only for the tail. On this project's
    machine a 302 MB file then takes about as long as writing it without
    any fsync (benchmarks/checkpoint_blocking.py)."""
    data = memoryview(data).cast("B")
    fd = f.fileno()
    for start in range(0, len(data), WRITEBACK_CHUNK):
        chunk = data[start:start + WRITEBACK_CHUNK]
        f.write(chunk)
        f.flush()
        _start_writeback(fd, f.tell() - len(chunk), len(chunk))


def _start_writeback(fd, offset, length):
    """Starts writing a file range back to disk without waiting for it
    (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`); elsewhere a no-op,
    which leaves it all to the closing fsync."""
    if _sync_file_range is None:
        return
    _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def _load_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


_sync_file_range = _load_sync_file_range()


def atomic_file(path, write, suffix=""):
    """Makes `path` atomically from `write(temporary_path)`.

    For writers that take a file name rather than a file object (Keras'
    `model.save`, which also insists on the name's suffix): the temporary
    file is `.NAME.tmp-XXXXXXXX` + `suffix` beside `path`. Once `write`
    returns, the file is fsynced and renamed over `path`; if `write` raises,
    the temporary file is removed and `path` is untouched.
    """
    path = writable_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = _temporary_name(path, suffix)
    with _renamed_into_place(tmp_path, path):
        write(tmp_path)
        _fsync_file(tmp_path)


def atomic_link(source, path):
    """Makes `path` name the same complete file as `source`, atomically.

    A hard link when the file system has them (instant, no extra space; the
    content stays even when `source` is later deleted or replaced), else a
    copy. Either way it goes through a temporary name and a rename, so `path`
    always names a complete file.
    """
    source, path = writable_path(source), writable_path(path)
    tmp_path = _temporary_name(path)
    with _renamed_into_place(tmp_path, path):
        try:
            os.link(source, tmp_path)
        except OSError:
            shutil.copyfile(source, tmp_path)
            _fsync_file(tmp_path)


def remove_file(path):
    """Deletes `path` (a missing file is fine) and makes the deletion durable."""
    path = writable_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def remove_stale_temporaries(directory, is_target):
    """Deletes the temporary files (and directories) that a killed writer
    left in `directory`: those `atomic_output`, `atomic_file`, `atomic_link`
    or `atomic_directory` made for a final name for which `is_target(name)`
    is true. Returns the names removed."""
    directory = writable_path(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(".") or TEMPORARY_MARK not in name:
            continue
        target = name[1:].rsplit(TEMPORARY_MARK, 1)[0]
        if is_target(target):
            stale = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isdir(stale):
                    shutil.rmtree(stale)
                else:
                    os.unlink(stale)
                removed.append(name)
    return removed


def make_writable_directory(directory):
    """Makes `directory` if needed and proves it writable by creating and
    deleting a file in it (permission bits do not tell: root, read-only
    mounts). Raises OSError otherwise."""
    directory = writable_path(directory)
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".kcallbacks-probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory that becomes `path` atomically on exit.

    Files written inside are fsynced, then the directory is renamed to
    `path` (which must not exist). A crash at any point leaves either no
    `path` or a complete one; a leftover `.NAME.tmp-XXXXXXXX` directory is
    garbage that `remove_stale_temporaries` clears.
    """
    path = os.path.abspath(writable_path(path))
    parent = os.path.dirname(path)
    tmp_dir = _temporary_name(path)
    os.makedirs(tmp_dir)
    try:
        yield tmp_dir
        for name in os.listdir(tmp_dir):
            _fsync_file(os.path.join(tmp_dir, name))
        _fsync_directory(tmp_dir)
        os.rename(tmp_dir, path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    _fsync_directory(parent)


def atomic_write_text(path, text):
    with atomic_output(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def durable_append(path, data):
    """Appends bytes or text to `path`, then flushes and fsyncs it."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = writable_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def append_json_line(path, record):
    """Appends one JSON line durably. If the file ends in a torn line (a
    crash mid-append), the new line starts on a line of its own, so the torn
    fragment stays one unreadable line instead of swallowing this record."""
    path = writable_path(path)
    line = json_line(record)
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
    except (FileNotFoundError, OSError):
        pass  # a new or empty file
    durable_append(path, line)


def json_default(value):
    # numpy scalars and arrays reach us from logs and configs.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def json_line(obj):
    """One JSON object on one line. NaN and infinities are kept as the
    `NaN`/`Infinity`/`-Infinity` tokens Python's json module reads back."""
    return json.dumps(obj, default=json_default, allow_nan=True) + "\n"


def read_json_lines(path):
    """Reads a JSON-lines file; returns (records, warnings).

    A last line that does not parse (a torn append) is skipped with a warning;
    a bad line elsewhere is skipped with a warning too, never an exception.
    """
    if not os.path.exists(path):
        return [], []
    with open(path, "rb") as f:
        raw = f.read()
    return _parse_json_lines(raw, os.path.basename(path), torn_tail=not raw.endswith(b"\n"))


def read_new_json_lines(path, offset, first_line=1):
    """Reads the whole lines appended to a JSON-lines file since byte `offset`.

    Returns (records, warnings, end, lines): `end` is the offset after the
    last whole line read, where the next call starts, and `lines` how many
    lines were read. A last line without its newline is left for the next
    call: a writer may be in the middle of appending it. `first_line` is the
    number of the line at `offset`, for the warnings.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read()
    except FileNotFoundError:
        return [], [], offset, 0
    whole = raw.rfind(b"\n") + 1
    records, warnings = _parse_json_lines(
        raw[:whole], os.path.basename(path), torn_tail=False, first_line=first_line
    )
    return records, warnings, offset + whole, raw.count(b"\n", 0, whole)


def _parse_json_lines(raw, name, torn_tail, first_line=1):
    records, warnings, unreadable = [], [], []
    lines = raw.split(b"\n")
    torn_tail = torn_tail and lines[-1] != b""
    last_number = first_line + len(lines) - 1
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        is_last = number == last_number
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError, RecursionError):
            if is_last and torn_tail:
                warnings.append(f"{name}: ignored a torn last line (line {number})")
            else:
                unreadable.append(number)
            continue
        records.append(record)
    # Binary garbage can make hundreds of bad lines: one warning says it all.
    if len(unreadable) == 1:
        warnings.insert(0, f"{name}: ignored unreadable line {unreadable[0]}")
    elif unreadable:
        shown = ", ".join(map(str, unreadable[:5])) + (", ..." if len(unreadable) > 5 else "")
        warnings.insert(0, f"{name}: ignored {len(unreadable)} unreadable lines ({shown})")
    return records, warnings
