"""Builds rnnkernels._C: the CPU kernels always, the CUDA kernels when torch has CUDA and
nvcc is found.

    pip install --no-build-isolation .        (or -e . for development)

Environment:
    MAX_JOBS                     parallel compile jobs (default: from cores and free memory)
    TORCH_CUDA_ARCH_LIST         CUDA architectures (default "8.0;9.0+PTX": sm_80 and sm_90 code,
                                 and sm_90 PTX that newer GPUs compile at load time)
    RNNKERNELS_SKIP_CUDA_BUILD=1 build the CPU part only
    FORCE_CUDA=1                 build the CUDA part even if torch reports no CUDA device
                                 support detectable here (needs nvcc and a CUDA torch)
    RNNKERNELS_ISAS              comma list of CPU kernel variants: default, avx2, avx512,
                                 avx512_bf16, avx512_vnni (default: all for this arch; x86
                                 only beyond "default"; avx512_bf16 and avx512_vnni need
                                 avx512)
    RNNKERNELS_SANITIZE          comma list of sanitizers, "address", "undefined" or both:
                                 -fsanitize=... -fno-omit-frame-pointer -g1 -O1 (UB aborts:
                                 -fno-sanitize-recover). Build into a copy of the tree, not
                                 over the normal build: tools/sanitize.sh does that and runs
                                 the tests under the sanitizers (DEVELOPING.md, Sanitizers)
"""

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _load_source_hash():
    spec = importlib.util.spec_from_file_location("_rk_source_hash", ROOT / "rnnkernels" / "_source_hash.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(CSRC)


def _default_max_jobs():
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        free_gb = int(meminfo["MemAvailable"].split()[0]) / 2**20
        return max(1, min(cores, int(free_gb // 3)))  # nvcc can take ~3 GB a job
    except (OSError, KeyError, ValueError):
        return cores


os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
    include_paths,
)

IS_X86 = platform.machine().lower() in ("x86_64", "amd64")

# Per-ISA flags for csrc/cpu/kernels_<isa>.cpp, as ATen builds its native/cpu kernels.
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    # bfloat16 kernels only, beside avx512 (kernels_avx512_bf16.cpp explains the namespace).
    "avx512_bf16": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                    "-mavx512bf16", "-DCPU_CAPABILITY=AVX512_BF16", "-DCPU_CAPABILITY_AVX512"],
    # int8 kernels only, beside avx512 (kernels_avx512_vnni.cpp).
    "avx512_vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                    "-mavx512vnni", "-DCPU_CAPABILITY=AVX512_VNNI", "-DCPU_CAPABILITY_AVX512"],
}


def _available_isas():
    return ["default", "avx2", "avx512", "avx512_bf16", "avx512_vnni"] if IS_X86 else ["default"]


def _env_list(name):
    """The entries of a ","- (or, as CMake writes lists, ";"-) separated variable."""
    return [w.strip() for w in re.split(r"[,;]", os.environ.get(name, "")) if w.strip()]


def _isas():
    """The kernel variants to build: RNNKERNELS_ISAS, or all for this architecture. A name
    that is not a variant, or avx512_bf16 or avx512_vnni without avx512 (they only extend
    that table), is
    refused; a variant this architecture has no flags for (x86 ones elsewhere) is left out."""
    available = _available_isas()
    wanted = _env_list("RNNKERNELS_ISAS")
    if not wanted:
        return available
    unknown = [w for w in wanted if w not in ISA_FLAGS]
    if unknown:
        raise RuntimeError(f"RNNKERNELS_ISAS: unknown kernel variant(s) {unknown}; "
                           f"choose among {list(ISA_FLAGS)}")
    for extension in ("avx512_bf16", "avx512_vnni"):
        if extension in wanted and "avx512" not in wanted:
            raise RuntimeError(f"RNNKERNELS_ISAS: {extension} extends the avx512 kernels; "
                               "list avx512 too")
    return [i for i in available if i in wanted] or ["default"]


SANITIZERS = ("address", "undefined")


def _sanitize_flags():
    """(compile flags, link flags) for RNNKERNELS_SANITIZE, empty when it is unset (CMake
    reads them from the configuration this file writes, _cmake_config)."""
    wanted = _env_list("RNNKERNELS_SANITIZE")
    if not wanted:
        return [], []
    unknown = [w for w in wanted if w not in SANITIZERS]
    if unknown:
        raise RuntimeError(f"RNNKERNELS_SANITIZE: unknown sanitizer(s) {unknown}; "
                           f"choose among {list(SANITIZERS)}")
    wanted = [s for s in SANITIZERS if s in wanted]
    sanitize = f"-fsanitize={','.join(wanted)}"
    # -O1 after the -O3 of the other flags: what ASan's documentation recommends, and a
    # faster build; -g1 gives the reports file:line.
    compile_flags = [sanitize, "-fno-omit-frame-pointer", "-g1", "-O1"]
    if "undefined" in wanted:
        compile_flags.append("-fno-sanitize-recover=undefined")  # UB aborts the process
    return compile_flags, [sanitize]


SANITIZE_CFLAGS, SANITIZE_LDFLAGS = _sanitize_flags()


# The Python bindings of rnnkernels._C; every other host file is the op library's.
BINDING_SOURCES = ["csrc/rnnkernels.cpp", "csrc/build_info.cpp"]
# The op schemas (TORCH_LIBRARY): the op library's own source. _ops holds them and every
# other host file but the bindings; _C holds the bindings and links _ops (one copy of the
# ops and their state per process, whichever of the two a program loads first).
SCHEMA_SOURCE = "csrc/op_library.cpp"


def _host_sources():
    """Every csrc/*.cpp, csrc/host/*.cpp and csrc/cpu/*.cpp but the per-ISA kernels_*.cpp,
    which BuildExt compiles with their own flags; relative to the repository root."""
    return [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cpp"))
            + sorted((CSRC / "host").glob("*.cpp"))
            + sorted(p for p in (CSRC / "cpu").glob("*.cpp") if not p.name.startswith("kernels_"))]


def _op_sources():
    """The op library's host files but its schemas: kernels, dispatch, autograd; compiled
    by BuildExt and linked into the Python-free op library _ops, which _C links."""
    return [s for s in _host_sources() if s not in BINDING_SOURCES and s != SCHEMA_SOURCE]


def _bench_sources():
    """The benchmark's C++ (csrc/bench/*.cpp: the GEMM lower bound), module _bench_C."""
    return [str(p.relative_to(ROOT)) for p in sorted((CSRC / "bench").glob("*.cpp"))]


def _cuda_sources():
    """csrc/cuda/*.cpp (the host code) and *.cu (the kernels), when the CUDA part is built."""
    return [str(p.relative_to(ROOT)) for p in sorted((CSRC / "cuda").glob("*.cpp"))
            + sorted((CSRC / "cuda").glob("*.cu"))]


def _cmake_config():
    """The build configuration as CMake variables, for CMakeLists.txt, which runs
    `python setup.py cmake-config FILE` at configure time and includes FILE: this file stays
    the one place that defines the kernel variants, their flags, the sanitizer flags, the
    sources and the source hash."""
    def values(items):
        return " ".join('"' + str(i).replace('"', '\\"') + '"' for i in items)

    lines = ["# Written by `python setup.py cmake-config` for CMakeLists.txt; do not edit.",
             f"set(RNNKERNELS_ALL_ISAS {values(_available_isas())})",
             f"set(RNNKERNELS_ENABLED_ISAS {values(_isas())})"]
    lines += [f"set(RNNKERNELS_ISA_FLAGS_{isa} {values(flags)})" for isa, flags in ISA_FLAGS.items()]
    lines += [f"set(RNNKERNELS_SANITIZE_COMPILE_FLAGS {values(SANITIZE_CFLAGS)})",
              f"set(RNNKERNELS_SANITIZE_LINK_FLAGS {values(SANITIZE_LDFLAGS)})",
              f"set(RNNKERNELS_OP_SOURCES {values(ROOT / s for s in _op_sources())})",
              f"set(RNNKERNELS_SCHEMA_SOURCE \"{ROOT / SCHEMA_SOURCE}\")",
              f"set(RNNKERNELS_BINDING_SOURCES {values(ROOT / s for s in BINDING_SOURCES)})",
              f"set(RNNKERNELS_BENCH_SOURCES {values(ROOT / s for s in _bench_sources())})",
              f"set(RNNKERNELS_CUDA_SOURCES {values(ROOT / s for s in _cuda_sources())})",
              f"set(RNNKERNELS_DEFAULT_CUDA_ARCH_LIST \"{DEFAULT_CUDA_ARCH_LIST}\")",
              f"set(RNNKERNELS_SOURCE_HASH \"{_load_source_hash()}\")"]
    return "\n".join(lines) + "\n"




def _nvcc_path():
    if CUDA_HOME is not None:
        nvcc = Path(CUDA_HOME) / "bin" / "nvcc"
        if nvcc.exists():
            return str(nvcc)
    return shutil.which("nvcc")


def _nvcc_version(nvcc):
    """(major, minor) of `nvcc --version`, or None when nvcc does not run or says no release."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


# The CUDA host code needs at::mm_out / at::bmm_out with an out dtype (16-bit products
# written in fp32), which torch has since 2.8; csrc/cuda/recurrence_cuda.cpp checks it at
# compile time too.
CUDA_MIN_TORCH = (2, 8)
# With "+PTX" the build also embeds sm_90 PTX, which the driver compiles for GPUs newer
# than the listed architectures; without it they would find no kernel image.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _torch_release(version):
    """(major, minor) of a torch version string such as "2.13.0+cu130"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _want_cuda():
    if os.environ.get("RNNKERNELS_SKIP_CUDA_BUILD", "0") == "1":
        return False, "RNNKERNELS_SKIP_CUDA_BUILD=1"
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    if torch.version.cuda is None:
        if force:
            raise RuntimeError("FORCE_CUDA=1 but this torch has no CUDA (torch.version.cuda is None); "
                               "install a CUDA build of torch or unset FORCE_CUDA")
        return False, "torch was built without CUDA"
    nvcc = _nvcc_path()
    if nvcc is None:
        if force:
            raise RuntimeError("FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        return False, "nvcc not found"
    version = _nvcc_version(nvcc)
    if version is None:
        if force:
            raise RuntimeError(f"FORCE_CUDA=1 but `{nvcc} --version` failed or printed no release")
        return False, f"`{nvcc} --version` failed or printed no release"
    major, minor = version
    torch_major = int(torch.version.cuda.split(".")[0])
    if major != torch_major:
        raise RuntimeError(
            f"nvcc at {nvcc} is CUDA {major}.{minor} but torch {torch.__version__} was built with "
            f"CUDA {torch.version.cuda}; the major versions must match. Point CUDA_HOME at a CUDA "
            f"{torch_major}.x toolkit, or set RNNKERNELS_SKIP_CUDA_BUILD=1 for a CPU-only build.")
    if _torch_release(torch.__version__) < CUDA_MIN_TORCH:
        raise RuntimeError(
            f"rnnkernels' CUDA kernels need torch >= {CUDA_MIN_TORCH[0]}.{CUDA_MIN_TORCH[1]} "
            f"(16-bit products written in float32: at::mm_out with an out dtype), but this is "
            f"torch {torch.__version__}. Upgrade torch, or set RNNKERNELS_SKIP_CUDA_BUILD=1 for a "
            f"CPU-only build.")
    return True, f"nvcc {major}.{minor}"


if __name__ == "__main__" and sys.argv[1:2] == ["cmake-config"]:
    if len(sys.argv) != 3:
        sys.exit("usage: python setup.py cmake-config FILE")
    Path(sys.argv[2]).write_text(_cmake_config())
    sys.exit(0)


WITH_CUDA, CUDA_REASON = _want_cuda()
if WITH_CUDA:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)

# -g0: Python's own CFLAGS (sysconfig) bring -g, which doubled the compile time of the host
# files (rnnkernels.cpp 67 s -> 25 s with the lighter includes, autograd.cpp 69 s -> 30 s)
# and CMake's Release build and the ISA kernels never had it. The sanitizer's -g1 follows.
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-fvisibility=hidden",
             f"-DRNNKERNELS_SOURCE_HASH=\"{_load_source_hash()}\""] + SANITIZE_CFLAGS
LINK_FLAGS = ["-fopenmp"] + SANITIZE_LDFLAGS
# No flag here may contain the substring "arch": torch's _get_cuda_arch_flags would then drop
# the -gencode flags it derives from TORCH_CUDA_ARCH_LIST.
NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
              f"-DRNNKERNELS_SOURCE_HASH=\"{_load_source_hash()}\""]


class BuildExt(BuildExtension):
    """BuildExtension plus the op library: _ops links its host files and the per-ISA kernels
    (with their own flags, compiled by one ninja file) and exports their C++ symbols under
    the soname of its file; _C links _ops and finds it beside itself ($ORIGIN)."""

    def build_extension(self, ext):
        op_library = self.get_ext_fullpath("rnnkernels._ops")
        if ext.name == "rnnkernels._ops":
            ext.extra_objects = list(ext.extra_objects or []) + self._compile_op_library()
            ext.extra_link_args = list(ext.extra_link_args or []) + [
                f"-Wl,-soname,{os.path.basename(op_library)}"]
        elif ext.name == "rnnkernels._C":
            # ext_modules builds _ops first. No shell runs the link, so $ORIGIN stays literal.
            ext.extra_link_args = list(ext.extra_link_args or []) + [
                op_library, "-Wl,-rpath,$ORIGIN"]
        super().build_extension(ext)

    def _compile_op_library(self):
        out_dir = Path(self.build_temp).resolve() / "op_library"
        out_dir.mkdir(parents=True, exist_ok=True)
        cxx = os.environ.get("CXX") or shutil.which("c++") or "g++"
        abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
        includes = [str(CSRC), str(CSRC / "include")] + include_paths() + [sysconfig.get_paths()["include"]]
        common = ["-O3", "-std=c++20", "-fPIC", "-DNDEBUG", abi,
                  "-Wno-unused-variable", "-Wno-unknown-pragmas"] + SANITIZE_CFLAGS \
            + [f"-I{p}" for p in includes]
        lines = ["ninja_required_version = 1.3", f"cxx = {cxx}", "",
                 "rule compile",
                 "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out",
                 "  depfile = $out.d", "  deps = gcc", ""]
        objects = []
        # The host files with default visibility: _C calls into them through _ops' exports.
        # No interposition of those symbols: calls inside _ops stay direct and inlinable.
        host_flags = [f for f in CXX_FLAGS if f != "-fvisibility=hidden"] \
            + ["-fno-semantic-interposition"]
        sources = [(ROOT / s, common + host_flags) for s in _op_sources()]
        sources += [(CSRC / "cpu" / f"kernels_{isa}.cpp", common + ["-fvisibility=hidden"]
                     + ISA_FLAGS[isa]) for isa in _isas()]
        for src, cflags in sources:
            obj = out_dir / src.relative_to(CSRC).with_suffix(".o")
            flags = " ".join(cflags).replace("$", "$$")
            lines += [f"build {obj}: compile {src}", f"  cflags = {flags}", ""]
            objects.append(str(obj))
        (out_dir / "build.ninja").write_text("\n".join(lines))
        subprocess.run(["ninja", "-C", str(out_dir), "-j", os.environ["MAX_JOBS"]], check=True)
        return objects


def _depends(sources):
    """Every other file under csrc/ (headers, the op library's objects' sources): setuptools
    relinks a module only when one of sources + depends is newer than it, so without these
    an edit of a header or of a file BuildExt compiles left the old module in place."""
    return sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*")
                  if p.is_file() and p.suffix in (".h", ".cuh", ".cpp", ".cu")
                  and str(p.relative_to(ROOT)) not in sources
                  and not p.is_relative_to(CSRC / "bench"))


def _extension():
    sources = list(BINDING_SOURCES)
    include_dirs = [str(CSRC), str(CSRC / "include")]
    depends = _depends(sources)
    if WITH_CUDA:
        sources += _cuda_sources()
        return CUDAExtension(
            "rnnkernels._C", sources, include_dirs=include_dirs,
            define_macros=[("RNNKERNELS_WITH_CUDA", None)],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=LINK_FLAGS, depends=depends)
    return CppExtension("rnnkernels._C", sources, include_dirs=include_dirs, depends=depends,
                        extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LINK_FLAGS)


def _op_library_extension():
    # The op library without Python (no libtorch_python, no pybind11): the schemas, kernels,
    # dispatch and autograd (BuildExt). _C links it; a C++ program linked against LibTorch
    # loads it to run models that call our ops (examples/cpp_inference).
    return CppExtension("rnnkernels._ops", [SCHEMA_SOURCE], py_limited_api=True,
                        depends=_depends([SCHEMA_SOURCE]), extra_compile_args={"cxx": CXX_FLAGS},
                        extra_link_args=LINK_FLAGS)


def _bench_extension():
    # The benchmark's C++ (csrc/bench/*.cpp: the GEMM lower bound), a module of its own so
    # that the product's _C holds only the ops; rnnkernels.bench imports it.
    return CppExtension("rnnkernels._bench_C", _bench_sources(),
                        extra_compile_args={"cxx": ["-O3", "-g0", "-fvisibility=hidden"]
                                            + SANITIZE_CFLAGS},
                        extra_link_args=SANITIZE_LDFLAGS)


_cuda_archs = f", TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}" if WITH_CUDA else ""
print(f"rnnkernels: CPU kernels for {', '.join(_isas())}; CUDA: {'yes' if WITH_CUDA else 'no'} "
      f"({CUDA_REASON}{_cuda_archs}); MAX_JOBS={os.environ['MAX_JOBS']}"
      + (f"; sanitizers: {' '.join(SANITIZE_CFLAGS)}" if SANITIZE_CFLAGS else ""), file=sys.stderr)

setup(
    packages=find_packages(include=["rnnkernels", "rnnkernels.*"]),
    ext_modules=[_op_library_extension(), _extension(), _bench_extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
