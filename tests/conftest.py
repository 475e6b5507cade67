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


@pytest.fixture
def method_context():
    """Build an UnlearnContext as the unlearn stage does (a job and what it loaded), to call a
    method directly: `method_context(pipeline, concept, layers, generation, data_dir=..., source=...)`."""
    from harness.recipe import MethodSettings
    from harness.runtime import RuntimeSettings
    from harness.unlearn.job import UnlearnJob
    from harness.unlearn.method import UnlearnContext

    def build(pipeline, concept, layers, generation, data_dir=None, source="recipe", entry="methods[0]",
              scratch=None, settings_key=""):
        job = UnlearnJob(model="test", concept=concept, method=MethodSettings("conceptprune"), generation=generation,
                         out=Path("unused"), runtime=RuntimeSettings(device="cpu", data_dir=str(data_dir) if data_dir else None),
                         source=source, entry=entry)
        return UnlearnContext(job=job, pipeline=pipeline, layers=layers, device=torch.device("cpu"), scratch=scratch,
                              settings_key=settings_key)

    return build


@pytest.fixture
def run_method():
    """Call a registered method on a context with a params mapping, as the unlearn stage does
    (params parsed by the method's declared type; errors name the context's file and entry)."""
    from harness.errors import in_file, keyed
    from harness.unlearn.method import call_method, resolve_method

    def call(name, context, params):
        with in_file(context.job.source), keyed(context.job.entry):
            return call_method(resolve_method(name), context, params)

    return call
