"""One writer per run: which process writes, and where the others write."""

import json
import os

import pytest

from kcallbacks import durable_io, writer_role
from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import RunDirectoryError
from kcallbacks.run_reader import load_run


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        (None, True),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, True),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"worker": ["a:1"], "evaluator": ["c:1"]}, "task": {"type": "evaluator", "index": 0}}, False),
    ],
)
def test_chief_is_decided_by_tf_config(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert writer_role.is_chief() is chief


def test_a_non_chief_writes_only_to_scratch(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}),
    )
    run = RunDirectory(tmp_path / "run", create=True)
    run.append_history({"epoch": 0, "loss": 1.0})
    durable_io.atomic_write_text(tmp_path / "checkpoint.txt", "weights")
    assert os.listdir(tmp_path) == []
    assert run.path.startswith(writer_role._scratch_root)
    assert load_run(run.path).history["loss"].tolist() == [1.0]


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(RunDirectoryError, match="TF_CONFIG is not valid JSON"):
        writer_role.is_chief()
