"""Shared fixtures: the reference fixtures folder, and the slow/gpu markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE = Path(os.environ.get("TEMPO_REFERENCE", Path(__file__).resolve().parents[1].parent / "shared" / "reference"))


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
        pytest.fail(f"reference fixtures not found at {REFERENCE} (set TEMPO_REFERENCE)")
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
