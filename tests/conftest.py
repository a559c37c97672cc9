"""Shared fixtures: the reference fixtures folder, and the slow/gpu markers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _find_reference() -> Path:
    """``TEMPO_REFERENCE`` if set; else ``shared/reference`` beside the checkout, or beside the checkout it was
    cloned from (a clone made elsewhere, as CI and the before-stop check make, still finds the fixtures)."""
    if "TEMPO_REFERENCE" in os.environ:
        return Path(os.environ["TEMPO_REFERENCE"])
    beside = ROOT.parent / "shared" / "reference"
    if beside.is_dir():
        return beside
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():
        cloned_from = Path(origin).resolve().parent / "shared" / "reference"
        if cloned_from.is_dir():
            return cloned_from
    return beside


REFERENCE = _find_reference()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "README.md").is_file():
        pytest.fail(f"reference fixtures not found at {REFERENCE} (set TEMPO_REFERENCE to the shared/reference folder)")
    return REFERENCE


@pytest.fixture(scope="module")
def one_thread():
    """Toy models gain nothing from threads, and on a busy machine OpenMP threads waiting for each other make
    every run many times slower: one thread for the module, then the previous count again."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
