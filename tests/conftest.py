"""Shared test setup: the `cuda` marker skips without a GPU; nothing else skips."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    # Every test starts from the same global RNG state, so a failure reproduces when run alone.
    torch.manual_seed(1234)
    yield


def random_field(dim, hidden=16, layers=3, activation="softplus", time=True, beta=1.0, dtype=torch.float64):
    """A VelocityField with weights large enough that every layer is far from linear."""
    from jkofast import VelocityField

    field = VelocityField(dim, hidden, layers, activation, time=time, beta=beta).to(dtype)
    with torch.no_grad():
        for p in field.parameters():
            p.normal_(0.0, 0.7)
    return field
