"""CI compile check of the CUDA sources, without a GPU, and the CUDA switches of setup.py.

Every csrc/cuda/*.cu is compiled to an object file with this machine's nvcc for sm_90,
and the host glue csrc/cuda/recurrence_cuda.cpp is syntax-checked with g++ against the
installed torch headers, so a CUDA compile error fails CI even where no GPU (and no CUDA
build of torch) exists. A CPU wheel of torch ships the ATen/c10 CUDA headers but not the
generated c10/cuda/impl/cuda_cmake_macros.h; tests/ci_include holds a one-line stand-in.
The .cu files include no torch header at all (kernels.h: sizes, raw pointers, a stream).

Skipped, with the reason, when nvcc is not installed. The files compile in parallel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CUDA_DIR = CSRC / "cuda"
CI_INCLUDE = ROOT / "tests" / "ci_include"

# The language level and nvcc options setup.py builds the CUDA sources with (NVCC_FLAGS);
# warnings in our own .cu files are errors here.
NVCC_FLAGS = ["-std=c++20", "--expt-relaxed-constexpr", "-arch=sm_90", "-O3",
              "--Werror", "all-warnings"]
CXX_FLAGS = ["-std=c++20", "-fsyntax-only", "-DRNNKERNELS_WITH_CUDA", "-Wall", "-Wextra",
             "-Werror"]
TIMEOUT_S = 600


def _nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit on this machine)")


def _nvcc_release() -> tuple[int, int]:
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def _cuda_include_dirs() -> list[str]:
    """The include directories nvcc itself uses (they hold cuda_runtime_api.h)."""
    dry = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    dirs = []
    for line in (dry.stdout + dry.stderr).splitlines():
        if "INCLUDES=" in line:
            dirs += re.findall(r'"?-I"?\s*"?([^"\s]+)"?', line.split("INCLUDES=", 1)[1])
    return [d for d in dirs if (Path(d) / "cuda_runtime_api.h").exists()]


def _torch_include_dirs() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def _compile_cu(source: Path, out_dir: str) -> subprocess.CompletedProcess:
    obj = Path(out_dir) / (source.stem + ".o")
    cmd = [NVCC, *NVCC_FLAGS, f"-I{CSRC}", f"-I{CSRC / 'include'}", "-c", str(source), "-o", str(obj)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def _check_host_cpp(source: Path) -> subprocess.CompletedProcess:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    includes = [str(CSRC), str(CSRC / "include"), str(CI_INCLUDE)]
    system = _torch_include_dirs() + [sysconfig.get_paths()["include"]] + _cuda_include_dirs()
    cmd = [cxx, *CXX_FLAGS] + [f"-I{p}" for p in includes]
    for p in system:  # torch's own headers are not ours to keep warning-free
        cmd += ["-isystem", p]
    cmd.append(str(source))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


CU_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
HOST_SOURCES = sorted(CUDA_DIR.glob("*.cpp"))


@pytest.fixture(scope="module")
def compiled():
    """Compiles every CUDA source once, in parallel; maps file name -> CompletedProcess."""
    with tempfile.TemporaryDirectory() as out_dir, ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        futures = {p.name: pool.submit(_compile_cu, p, out_dir) for p in CU_SOURCES}
        futures.update({p.name: pool.submit(_check_host_cpp, p) for p in HOST_SOURCES})
        yield {name: f.result() for name, f in futures.items()}


def test_every_dtype_has_a_translation_unit():
    names = {p.name for p in CU_SOURCES}
    assert {"kernels_f32.cu", "kernels_f64.cu", "kernels_f16.cu", "kernels_bf16.cu"} <= names
    assert "recurrence_cuda.cpp" in {p.name for p in HOST_SOURCES}


@pytest.mark.parametrize("name", [p.name for p in CU_SOURCES + HOST_SOURCES])
def test_cuda_source_compiles(compiled, name):
    result = compiled[name]
    assert result.returncode == 0, f"{name} does not compile:\n{result.stderr[-20000:]}"


def test_cu_files_include_no_torch_header():
    # The kernels stay compilable anywhere nvcc runs, and fast to compile.
    for path in list(CUDA_DIR.glob("*.cu")) + list(CUDA_DIR.glob("*.cuh")) + [CUDA_DIR / "kernels.h"]:
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', path.read_text())
        torch_like = [i for i in includes if i.split("/")[0] in ("ATen", "c10", "torch", "pybind11")]
        assert not torch_like, f"{path.name} includes {torch_like}"


def test_compile_check_detects_an_error(tmp_path):
    """The harness itself: a broken kernel must fail, so a passing run means something."""
    broken = tmp_path / "broken.cu"
    broken.write_text('#include "cuda/kernels.h"\n'
                      "__global__ void k(float* x) { x[threadIdx.x] = undefined_name; }\n")
    assert _compile_cu(broken, str(tmp_path)).returncode != 0


# ---------------------------------------------------------------- setup.py's CUDA switches

# Runs setup.py's top level with setuptools.setup stubbed out, after pretending that torch
# was built with CUDA `argv[1]` ("none": a CPU build) and, with argv[2] == "no-nvcc", that
# no nvcc exists; prints what setup.py decided.
_SETUP_HARNESS = r"""
import runpy, shutil, sys
import setuptools, torch, torch.utils.cpp_extension as ce
setuptools.setup = lambda **kwargs: None
torch.version.cuda = None if sys.argv[1] == "none" else sys.argv[1]
ce.CUDA_HOME = None if sys.argv[2] == "no-nvcc" else sys.argv[2]
if sys.argv[2] == "no-nvcc":
    which = shutil.which
    shutil.which = lambda name, *a, **k: None if name == "nvcc" else which(name, *a, **k)
g = runpy.run_path("setup.py", run_name="setup_harness")
print("WITH_CUDA=%s" % g["WITH_CUDA"])
print("REASON=%s" % g["CUDA_REASON"])
if g["WITH_CUDA"]:
    import os
    print("ARCHS=%s" % os.environ["TORCH_CUDA_ARCH_LIST"])
    print("SOURCES=%s" % ",".join(g["_extension"]().sources))
"""


def _run_setup(torch_cuda: str, cuda_home: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FORCE_CUDA", "RNNKERNELS_SKIP_CUDA_BUILD", "TORCH_CUDA_ARCH_LIST")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", _SETUP_HARNESS, torch_cuda, cuda_home],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def _nvcc_home() -> str:
    """A CUDA_HOME whose bin/nvcc is the nvcc found here."""
    return str(Path(NVCC).parent.parent)


def test_setup_force_cuda_without_cuda_torch_fails_early():
    result = _run_setup("none", "no-nvcc", FORCE_CUDA="1")
    assert result.returncode != 0
    assert "FORCE_CUDA=1 but this torch has no CUDA" in result.stderr


def test_setup_without_nvcc_builds_cpu_only():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", "no-nvcc")
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=False" in result.stdout and "nvcc not found" in result.stdout


def test_setup_skip_switch():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home(), RNNKERNELS_SKIP_CUDA_BUILD="1")
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=False" in result.stdout and "RNNKERNELS_SKIP_CUDA_BUILD=1" in result.stdout


def test_setup_mismatched_nvcc_major_fails_early():
    major, _ = _nvcc_release()
    result = _run_setup(f"{major - 1}.8", _nvcc_home())
    assert result.returncode != 0
    assert "the major versions must match" in result.stderr


def test_setup_matching_nvcc_builds_the_cuda_sources():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home())
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=True" in result.stdout
    archs = re.search(r"ARCHS=(.*)", result.stdout).group(1)
    assert "9.0" in archs.split(";")
    sources = re.search(r"SOURCES=(.*)", result.stdout).group(1).split(",")
    expected = {str(p.relative_to(ROOT)) for p in CU_SOURCES + HOST_SOURCES}
    assert expected <= set(sources)


def test_setup_honours_torch_cuda_arch_list():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home(), TORCH_CUDA_ARCH_LIST="9.0+PTX")
    assert result.returncode == 0, result.stderr
    assert "ARCHS=9.0+PTX" in result.stdout
