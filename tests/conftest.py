"""Test setup shared by the whole suite: a fresh, reproducible random state per test."""

import zlib

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Seeds torch from the test's id: every test draws different data, and a failure
    reproduces when the test is run alone."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
