"""Durable file I/O on real files: atomic replaces leave no partial file and
no temporary name behind."""

import os

import pytest

from kcallbacks import durable_io


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("complete old content")
    with pytest.raises(RuntimeError):
        with durable_io.atomic_output(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("disk gone")
    assert path.read_text() == "complete old content"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_linking_a_file_onto_a_link_of_itself_leaves_no_temporary(tmp_path):
    # POSIX rename() of a name onto another hard link of the same inode does
    # nothing and succeeds: the temporary link must still go.
    source, pointer = tmp_path / "03-0.5.weights.h5", tmp_path / "best.weights.h5"
    source.write_bytes(b"weights of epoch 3")
    durable_io.atomic_link(source, pointer)
    durable_io.atomic_link(source, pointer)  # the same best again (a restore)
    assert sorted(os.listdir(tmp_path)) == ["03-0.5.weights.h5", "best.weights.h5"]
    assert pointer.read_bytes() == b"weights of epoch 3"
    assert os.path.samefile(source, pointer)


def test_every_atomic_writer_leaves_only_its_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with durable_io.atomic_output(target / "a.bin") as f:
        f.write(b"a")
    durable_io.atomic_file(target / "b.txt", lambda path: open(path, "w").write("b"))
    durable_io.atomic_write_json(target / "c.json", {"c": 1})
    durable_io.atomic_link(target / "a.bin", target / "d.bin")
    durable_io.atomic_link(target / "a.bin", target / "d.bin")
    with durable_io.atomic_directory(target / "e") as directory:
        with open(os.path.join(directory, "inner"), "w") as f:
            f.write("e")
    assert sorted(os.listdir(target)) == ["a.bin", "b.txt", "c.json", "d.bin", "e"]
    assert os.listdir(target / "e") == ["inner"]


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"old")

    def failing(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        durable_io.atomic_file(path, failing)
    assert os.listdir(tmp_path) == ["weights.h5"]
    assert path.read_bytes() == b"old"


def test_a_write_with_early_writeback_is_the_data_whole(tmp_path, monkeypatch):
    """Chunked with a writeback request per chunk (Linux), the file holds
    exactly the bytes, the last chunk short; nothing is left beside it."""
    import sys

    import numpy as np

    monkeypatch.setattr(durable_io, "WRITEBACK_CHUNK", 1000)
    data = np.random.default_rng(0).integers(0, 256, 4321, dtype=np.uint8)
    target = tmp_path / "weights.h5"
    target.write_bytes(b"old")
    durable_io.atomic_write_bytes(target, data)
    assert target.read_bytes() == data.tobytes()
    assert os.listdir(tmp_path) == ["weights.h5"]
    if sys.platform.startswith("linux"):
        assert durable_io._sync_file_range is not None
    # Appended after what a file already holds, from its current position.
    with open(tmp_path / "two", "wb") as f:
        f.write(b"head")
        durable_io.write_with_writeback(f, memoryview(b"x" * 2500))
    assert (tmp_path / "two").read_bytes() == b"head" + b"x" * 2500
