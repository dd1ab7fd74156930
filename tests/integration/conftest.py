"""Integration tests: real (Hugging Face) models, dynamic shapes, mixed precision, graph breaks,
DDP/FSDP2 and bad input, all through ``torch.compile(backend="memcompile")``.

Most run with ``options={"inner": "eager"}`` (AOT autograd and memcompile's partitioner, graphs
run eagerly), so they test the planner without paying Inductor's compile time.
"""

import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_third_party_deprecations():
    """PuLP 3.x deprecation notes and transformers' config notes would bury memcompile's own warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
