"""Every public callback's docstring example runs as written."""

import re

import pytest

import kcallbacks

DOCUMENTED = [
    "HistoryLogger", "CSVLogger", "BatchLossTracker", "ModelCheckpoint",
    "EarlyStopping", "ReduceLROnPlateau", "BackupAndRestore", "standard_callbacks",
    "LiveCharts",
]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    doc = getattr(kcallbacks, name).__doc__
    assert "Args:" in doc
    (example,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    example = "\n".join(line[4:] if line.startswith("    ") else line for line in example.splitlines())
    monkeypatch.chdir(tmp_path)
    exec(compile(example, f"<{name} example>", "exec"), {})
