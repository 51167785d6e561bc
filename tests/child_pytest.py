"""Test files run again in a child pytest process under a forced environment: the kernel
variant tests (tests/test_isa_paths.py, tests/test_quantized.py). The CPU kernels are
chosen once per process, so each forced variant needs a process of its own."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORCING = ("ATEN_CPU_CAPABILITY", "RNNKERNELS_INT8_NO_VNNI")


def unforced_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in FORCING}


def best_cpu_capability() -> str:
    """What torch picks on this CPU when nothing is forced, asked of a fresh interpreter
    (this process may itself run with ATEN_CPU_CAPABILITY set)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=unforced_env(), capture_output=True, text=True, check=True)
    return probe.stdout.strip().lower()


def assert_child_passes(test_file: Path, env: dict, label: str, select: str | None = None):
    """Runs test_file (only the tests `select` picks with -k) in a child pytest with
    unforced_env() updated by env; every selected test must pass: nothing skipped or
    expected to fail."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)]
    if select:
        args += ["-k", select]
    child = subprocess.run(args, cwd=ROOT, env={**unforced_env(), **env}, capture_output=True,
                           text=True)
    report = child.stdout + child.stderr
    summary = report.strip().splitlines()[-1] if report.strip() else ""
    assert child.returncode == 0, f"{label}: failed:\n{report[-6000:]}"
    assert re.fullmatch(r"\d+ passed(, \d+ deselected)?(, \d+ warnings?)? in .*", summary), \
        f"{label}: {summary}\n{report[-3000:]}"
