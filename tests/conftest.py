"""Shared fixtures: deterministic seeds and small helpers for the tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
