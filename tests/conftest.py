"""Shared fixtures: the mirrored prompt data, the repository's paths, one torch thread (on 2
shared cores, more threads run slower), and the fixtures folder on the import path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

REPO = TESTS.parent
RECIPES = REPO / "harness" / "resources" / "recipes"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
