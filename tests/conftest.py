"""Test setup shared by the whole suite: a fresh, reproducible random state per test, and
our kernels pinned as the CPU engine (the tests compare them with torch.nn; with the
engine choice on, a case routed to torch.nn would compare torch.nn with itself).
tests/test_engine_choice.py tests the choice itself."""

import os
import zlib

# Before rnnkernels is imported, and inherited by the suite's subprocesses.
os.environ["RNNKERNELS_CPU_ENGINE"] = "rnnkernels"

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Seeds torch from the test's id: every test draws different data, and a failure
    reproduces when the test is run alone."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


# The files that build the extension again (with sanitizers, through CMake) run longest:
# collected first, so that with the README's `-n 2 --dist loadfile --no-loadscope-reorder`
# (xdist hands out files in collection order, not largest test count first) one worker
# starts them while the other runs the rest, instead of one running alone at the end.
_LONGEST_FIRST = ("test_sanitizers.py", "test_cmake_build.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the rest is kept
