"""Every CPU kernel variant: tests/isa_subset.py runs in a child process per variant
with ATEN_CPU_CAPABILITY forcing it (rnnkernels picks its kernels once per process from
at::get_cpu_capability(), which reads that variable when torch loads). Variants this
CPU cannot run, or this build does not contain, are skipped with the reason."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rnnkernels

TESTS = Path(__file__).resolve().parent
SUBSET = TESTS / "isa_subset.py"
RANK = {"default": 0, "avx2": 1, "avx512": 2}


def _best_cpu_capability() -> str:
    """What torch picks on this CPU when nothing is forced, asked of a fresh interpreter
    (this process may itself run with ATEN_CPU_CAPABILITY set)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, check=True)
    return probe.stdout.strip().lower()


@pytest.fixture(scope="module")
def best_cpu_capability():
    return _best_cpu_capability()


@pytest.mark.parametrize("isa", list(RANK))
def test_equivalence_subset_on_kernel_variant(isa, best_cpu_capability):
    if isa not in rnnkernels.build_info()["cpu_isas"]:
        pytest.skip(f"this build has no {isa} kernels (built: "
                    f"{rnnkernels.build_info()['cpu_isas']})")
    if RANK.get(best_cpu_capability, 0) < RANK[isa]:
        pytest.skip(f"this CPU runs at most {best_cpu_capability}, not {isa}")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa, "RNNKERNELS_EXPECTED_ISA": isa}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUBSET)],
        cwd=TESTS.parent, env=env, capture_output=True, text=True)
    report = child.stdout + child.stderr
    summary = report.strip().splitlines()[-1] if report.strip() else ""
    assert child.returncode == 0, f"{isa}: the subset failed:\n{report[-6000:]}"
    # Everything passed: nothing skipped, deselected or expected to fail.
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in .*", summary), \
        f"{isa}: {summary}\n{report[-3000:]}"
