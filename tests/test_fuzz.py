"""The fuzz target tests/fuzz/fuzz_modules.py in CI: a short coverage-guided run from the
checked-in seed corpus (tests/fuzz/corpus), and a self-test showing that a mismatch with
torch.nn is caught. Longer runs: `python tests/fuzz/fuzz_modules.py DIR -max_total_time=S`
(README, Reliability)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is installed by the README's test command")

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "fuzz" / "fuzz_modules.py"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
SHORT_RUN_S = int(os.environ.get("RNNKERNELS_FUZZ_SECONDS", "60"))


def _fuzz(tmp_path, *options, **env):
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)  # the fuzzer adds what it finds to its first directory
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = subprocess.run(
        [sys.executable, str(TARGET), str(corpus), f"-artifact_prefix={artifacts}/", *options],
        capture_output=True, text=True, cwd=ROOT, timeout=SHORT_RUN_S + 600,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env))
    return proc, proc.stdout + proc.stderr, list(artifacts.iterdir())


def test_short_fuzz_run_finds_no_mismatch(tmp_path):
    proc, log, artifacts = _fuzz(tmp_path, f"-max_total_time={SHORT_RUN_S}")
    assert proc.returncode == 0 and not artifacts, log[-4000:]
    done = re.search(r"Done (\d+) runs", log)
    coverage = re.findall(r"cov: (\d+)", log)
    assert done and int(done.group(1)) >= 100, log[-2000:]  # it really ran cases
    assert coverage and int(coverage[-1]) > 100, log[-2000:]  # and reached our checks


def test_fuzzer_catches_a_mismatch(tmp_path):
    proc, log, artifacts = _fuzz(tmp_path, "-runs=2000", RNNKERNELS_FUZZ_SELFTEST="1")
    assert proc.returncode != 0 and "AssertionError" in log, log[-2000:]
    assert artifacts, "the failing input is saved"
