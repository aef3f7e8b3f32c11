from pathlib import Path

import pytest
import torch
from helpers import register_tiny_net

torch.set_num_threads(2)

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets beside the checkout; the test is skipped when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is not present")
    return SHARED_DATASETS


@pytest.fixture
def registered(monkeypatch) -> None:
    """`tiny_net` (tests/helpers.py) in the model registry for this test."""
    register_tiny_net(monkeypatch)
