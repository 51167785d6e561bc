"""Every CPU kernel variant: tests/isa_subset.py runs in a child process per variant
with ATEN_CPU_CAPABILITY forcing it (rnnkernels picks its kernels once per process from
at::get_cpu_capability(), which reads that variable when torch loads). Variants this
CPU cannot run, or this build does not contain, are skipped with the reason."""

from pathlib import Path

import pytest

import rnnkernels
from child_pytest import assert_child_passes, best_cpu_capability

TESTS = Path(__file__).resolve().parent
SUBSET = TESTS / "isa_subset.py"
RANK = {"default": 0, "avx2": 1, "avx512": 2}


@pytest.fixture(scope="module")
def best_cpu():
    return best_cpu_capability()


@pytest.mark.parametrize("isa", list(RANK))
def test_equivalence_subset_on_kernel_variant(isa, best_cpu):
    if isa not in rnnkernels.build_info()["cpu_isas"]:
        pytest.skip(f"this build has no {isa} kernels (built: "
                    f"{rnnkernels.build_info()['cpu_isas']})")
    if RANK.get(best_cpu, 0) < RANK[isa]:
        pytest.skip(f"this CPU runs at most {best_cpu}, not {isa}")
    assert_child_passes(SUBSET, {"ATEN_CPU_CAPABILITY": isa, "RNNKERNELS_EXPECTED_ISA": isa},
                        f"{isa}: the subset")
