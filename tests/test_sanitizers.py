"""AddressSanitizer and UndefinedBehaviorSanitizer in CI (issue 17, point 2): tools/sanitize.sh
builds the extension with RNNKERNELS_SANITIZE=address,undefined and RNNKERNELS_ISAS=
default in a copy of the checkout, the normal build untouched (one variant, to keep CI
under 20 minutes: with default,avx512 the fresh-clone CI run took 22 min; the full script
runs every variant), and runs its CI
suite under the sanitizers: tests/isa_subset.py, tests/test_bad_input.py and the int8
simulation and bad-input tests of tests/test_quantized.py with each built
variant this CPU runs forced through ATEN_CPU_CAPABILITY, and a slice of the CUDA emulation
tests with the emulation compiled with the same sanitizers. A report aborts the process it
occurs in, which fails the script.

`tools/sanitize.sh` alone runs the full set (every variant; the equivalence, bad-input and
ISA-subset tests for each; all CUDA emulation tests). RNNKERNELS_SKIP_SANITIZER_TEST=1 skips
this test; RNNKERNELS_SANITIZE_DEST=<dir> builds in <dir> (kept: a rerun recompiles only
what changed) instead of a fresh temporary directory. Measured on the 2-vCPU VM, shared with other jobs, MAX_JOBS=1: 535 s in all
(build 6 min, runs 3 min), 7.8 min of CPU; with the copy already built, 150-190 s.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "sanitize.sh"


def _libasan():
    cxx = os.environ.get("CXX") or shutil.which("c++") or "g++"
    try:
        path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except OSError:
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RNNKERNELS_SKIP_SANITIZER_TEST") == "1",
                    reason="RNNKERNELS_SKIP_SANITIZER_TEST=1")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tools/sanitize.sh is for Linux")
@pytest.mark.skipif(shutil.which("git") is None or shutil.which("readelf") is None,
                    reason="tools/sanitize.sh needs git and readelf")
def test_sanitized_build_runs_the_ci_subset_clean(tmp_path):
    if _libasan() is None:
        pytest.skip("the C++ compiler has no libasan.so (gcc: install libasan)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATEN_CPU_CAPABILITY", "RNNKERNELS_ISAS", "RNNKERNELS_SANITIZE",
                        "LD_PRELOAD", "PYTHONPATH")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--suite", "ci", "--isas", "default",
         "--dest", os.environ.get("RNNKERNELS_SANITIZE_DEST") or str(tmp_path / "copy")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    report = proc.stdout + proc.stderr
    phases = "\n".join(line for line in report.splitlines() if line.startswith("== sanitize"))
    assert proc.returncode == 0, f"{phases}\n...\n{report[-10000:]}"
    assert "== sanitize: total" in report and report.rstrip().endswith("clean"), report[-6000:]
    # The default variant and the CUDA emulation ran (avx512 too where the CPU has it).
    assert re.search(r"^== sanitize: default: .* took \d+ s$", report, re.M), report[-6000:]
    assert re.search(r"^== sanitize: CUDA emulation .* took \d+ s$", report, re.M), report[-6000:]
    assert re.search(r"^== sanitize: default: int8 .* took \d+ s$", report, re.M), report[-6000:]
    print(phases)
