import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

from checkout_or_install import select_tested_code  # noqa: E402

# kcallbacks and kreport both come from the checkout (an editable install)
# or both from the installed wheel (CI), never one from each.
TESTED_CODE = select_tested_code(TESTS_DIR.parent)

ARTIFACTS_DIR = TESTS_DIR.parent / "test-artifacts"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, scaled to [0, 1]: 1797 real 8x8 images, 10 classes."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    return x, y


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, digits):
    """A real run directory, shared read-only by the report tests: the digits
    model for 3 epochs, then resumed from epoch 3 until early stopping, with
    a per-batch log, checkpoints, an LR reduction and the matching events.
    A test that changes a run works on a copy."""
    from training import resumed_run

    run_dir = tmp_path_factory.mktemp("real") / "digits-run"
    x, y = digits
    resumed_run(run_dir, x[:512], y[:512])
    return run_dir


@pytest.fixture
def artifacts_dir():
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


def pytest_configure(config):
    np.set_printoptions(precision=6)


def pytest_report_header(config):
    return f"kcallbacks and kreport tested from: {TESTED_CODE}"
