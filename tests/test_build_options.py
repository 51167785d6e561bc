"""Every build switch documented in setup.py's docstring works (issue 17, point 7).

What each switch is checked by:
    MAX_JOBS                    here: setup.py's default and a given value reach both ninja runs
    TORCH_CUDA_ARCH_LIST        tests/test_cuda_compile.py: test_default_arch_list_embeds_ptx,
                                test_setup_honours_torch_cuda_arch_list
    RNNKERNELS_SKIP_CUDA_BUILD  tests/test_cuda_compile.py: test_setup_skip_switch; here: the
                                CPU-only extension holds no CUDA source
    FORCE_CUDA                  tests/test_cuda_compile.py:
                                test_setup_force_cuda_without_cuda_torch_fails_early
    RNNKERNELS_ISAS             here: the selection and its refusals; tests/test_cmake_build.py:
                                test_cmake_isa_subsets_link_and_run builds subsets and runs them;
                                tests/test_sanitizers.py builds default,avx512 through setup.py
    RNNKERNELS_SANITIZE         here: the flags on every compile and link, setup.py, CMake and
                                the CUDA emulation alike; tests/test_sanitizers.py builds with
                                them and runs tests under the sanitizers
setup.py is run with setuptools.setup stubbed out (as tests/test_cmake_build.py does), and
BuildExt's ISA compile with subprocess.run recorded instead of run, so nothing is compiled.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

# Runs setup.py once per environment of a JSON list (argv[1]; torch imported once) and prints
# for each what it decided: its extension, flags, ISA list, MAX_JOBS, and the ninja file and
# command of BuildExt._compile_op_library (argv[2]: a scratch directory), or the error.
_PROBE = r"""
import json, os, runpy, subprocess, sys, types
import setuptools
captured = {}
setuptools.setup = lambda **kwargs: captured.update(kwargs)
base = dict(os.environ)
calls = []
subprocess.run = lambda argv, **kwargs: calls.append(argv)
results = []
for i, env in enumerate(json.loads(sys.argv[1])):
    os.environ.clear()
    os.environ.update(base, **env)
    try:
        g = runpy.run_path("setup.py", run_name="setup_probe")
    except Exception as err:
        results.append(f"{type(err).__name__}: {err}")
        continue
    ext = next(e for e in captured["ext_modules"] if e.name == "rnnkernels._C")
    temp = os.path.join(sys.argv[2], str(i))
    objects = g["BuildExt"]._compile_op_library(types.SimpleNamespace(build_temp=temp))
    results.append({
        "sources": ext.sources, "depends": ext.depends, "cxx": ext.extra_compile_args["cxx"],
        "link": ext.extra_link_args, "isas": g["_isas"](), "objects": objects,
        "max_jobs": os.environ["MAX_JOBS"], "ninja_argv": calls[-1],
        "ninja_file": open(os.path.join(temp, "op_library", "build.ninja")).read(),
        "with_cuda": g["WITH_CUDA"], "reason": g["CUDA_REASON"]})
print(json.dumps(results))
"""

_SWITCHES = ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST", "RNNKERNELS_SKIP_CUDA_BUILD", "FORCE_CUDA",
             "RNNKERNELS_ISAS", "RNNKERNELS_SANITIZE")

# Every environment the tests below ask about, probed in one process.
_ENVS = [{}, {"MAX_JOBS": "3"}, {"RNNKERNELS_SKIP_CUDA_BUILD": "1"},
         {"RNNKERNELS_SANITIZE": "address"}, {"RNNKERNELS_SANITIZE": "address,thread"},
         {"RNNKERNELS_SANITIZE": "address,undefined"}, {"RNNKERNELS_SANITIZE": "undefined,address"},
         *({"RNNKERNELS_ISAS": v} for v in ("default", "default,avx512", "avx512, default", "avx2",
                                            "avx512,avx512_bf16", "", "default,avx-512",
                                            "avx512_bf16", "avx512,avx512_vnni", "avx512_vnni"))]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("setup-probe")
    env = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(_ENVS), str(scratch)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def probe(probed):
    """probe(**env): what setup.py decided with `env` (the switches unset unless given): a
    dict, or the error's text."""
    return lambda **env: probed[_ENVS.index(env)]


def _isa_compile_lines(ninja_file):
    """{isa: the cflags line} of the ISA kernels' build.ninja."""
    lines = {}
    for match in re.finditer(r"build \S*kernels_(\w+)\.o: compile \S+\n  cflags = (.*)", ninja_file):
        lines[match.group(1)] = match.group(2).split()
    return lines


def test_every_documented_switch_is_tested():
    """The switches setup.py's docstring documents are the ones this file accounts for."""
    doc = (ROOT / "setup.py").read_text().split('"""')[1]
    documented = set(re.findall(r"^    ([A-Z][A-Z0-9_]+)", doc, re.M))
    assert documented == set(_SWITCHES)
    this = Path(__file__).read_text().split('"""')[1]
    for switch in _SWITCHES:
        assert re.search(rf"^    {switch} ", this, re.M), f"{switch} has no line in the docstring"


def test_max_jobs(probe):
    default = probe()
    assert 1 <= int(default["max_jobs"]) <= (os.cpu_count() or 1)
    given = probe(MAX_JOBS="3")
    assert given["max_jobs"] == "3"
    assert given["ninja_argv"][-2:] == ["-j", "3"]  # the ISA kernels' ninja
    # torch's BuildExtension reads MAX_JOBS itself when it runs ninja for the host sources.
    from torch.utils.cpp_extension import _get_num_workers
    os.environ["MAX_JOBS"], saved = "3", os.environ.get("MAX_JOBS")
    try:
        assert _get_num_workers(verbose=False) == 3
    finally:
        if saved is None:
            del os.environ["MAX_JOBS"]
        else:
            os.environ["MAX_JOBS"] = saved


def test_headers_and_isa_kernels_are_dependencies(probe):
    """setuptools relinks only when a source or dependency is newer than the module: an
    edit of a header or of a kernels_<isa>.cpp alone must count."""
    depends = set(probe()["depends"])
    for name in ("csrc/cpu/kernels_isa.h", "csrc/cpu/kernels_default.cpp",
                 "csrc/include/rnnkernels/cell_math.h", "csrc/cpu/kernels.h"):
        assert name in depends, name
    assert not depends & set(probe()["sources"])


def test_op_library_objects_are_every_host_file_but_the_bindings(probe):
    """BuildExt compiles the op library's objects once, for _ops (which _C links): every
    host file but the Python bindings (_C's sources) and the schemas (_ops' source); the
    host files export their symbols (_C calls them), the ISA kernels do not."""
    result = probe()
    hosts = {p.relative_to(ROOT).with_suffix(".o").name for p in
             [*(ROOT / "csrc").glob("*.cpp"), *(ROOT / "csrc" / "host").glob("*.cpp"),
              *(ROOT / "csrc" / "cpu").glob("*.cpp")] if not p.name.startswith("kernels_")}
    objects = {Path(o).name for o in result["objects"] if not Path(o).name.startswith("kernels_")}
    assert objects == hosts - {"rnnkernels.o", "build_info.o", "op_library.o"}
    assert sorted(result["sources"]) == ["csrc/build_info.cpp", "csrc/rnnkernels.cpp"]
    for line in re.findall(r"build \S+\.o: compile (\S+)\n  cflags = (.*)", result["ninja_file"]):
        source, flags = line
        hidden = "-fvisibility=hidden" in flags.split()
        assert hidden == Path(source).name.startswith("kernels_"), (source, flags)


def test_skip_cuda_build_gives_a_cpu_only_extension(probe):
    result = probe(RNNKERNELS_SKIP_CUDA_BUILD="1")
    assert result["with_cuda"] is False and result["reason"] == "RNNKERNELS_SKIP_CUDA_BUILD=1"
    assert not any("/cuda/" in s or s.endswith(".cu") for s in result["sources"])


@pytest.mark.parametrize("isas, expected", [
    ("default", ["default"]),
    ("default,avx512", ["default", "avx512"]),
    ("avx512, default", ["default", "avx512"]),  # build order, spaces ignored
    ("avx2", ["avx2"]),
    ("avx512,avx512_bf16", ["avx512", "avx512_bf16"]),
    ("avx512,avx512_vnni", ["avx512", "avx512_vnni"]),
    ("", ["default", "avx2", "avx512", "avx512_bf16", "avx512_vnni"]),
])
def test_isas_selects_the_kernel_objects(probe, isas, expected):
    result = probe(RNNKERNELS_ISAS=isas)
    assert result["isas"] == expected
    kernels = [Path(o).name for o in result["objects"] if Path(o).name.startswith("kernels_")]
    assert kernels == [f"kernels_{i}.o" for i in expected]
    assert list(_isa_compile_lines(result["ninja_file"])) == expected


@pytest.mark.parametrize("isas, message", [
    ("default,avx-512", r"unknown kernel variant\(s\) \['avx-512'\]"),
    ("avx512_bf16", r"avx512_bf16 extends the avx512 kernels"),
    ("avx512_vnni", r"avx512_vnni extends the avx512 kernels"),
])
def test_isas_refuses(probe, isas, message):
    result = probe(RNNKERNELS_ISAS=isas)
    assert isinstance(result, str) and re.search(message, result), result


SANITIZE_CFLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g1", "-O1",
                   "-fno-sanitize-recover=undefined"]


@pytest.mark.parametrize("value", ["address,undefined", "undefined,address"])
def test_sanitize_flags_on_every_compile_and_link(probe, value):
    result = probe(RNNKERNELS_SANITIZE=value)
    cxx = result["cxx"]
    assert cxx[-len(SANITIZE_CFLAGS):] == SANITIZE_CFLAGS  # after -O3: -O1 is the one that counts
    assert "-fsanitize=address,undefined" in result["link"]
    for isa, flags in _isa_compile_lines(result["ninja_file"]).items():
        assert flags.index("-O1") > flags.index("-O3"), isa
        for flag in SANITIZE_CFLAGS:
            assert flag in flags, f"kernels_{isa}: {flag} missing"


def test_sanitize_one_sanitizer_and_refusal(probe):
    result = probe(RNNKERNELS_SANITIZE="address")
    assert "-fsanitize=address" in result["cxx"] and "-fno-sanitize-recover=undefined" not in result["cxx"]
    assert "-fsanitize=address" in result["link"]
    plain = probe()
    assert not any("sanitize" in f for f in plain["cxx"] + plain["link"])
    assert "-O1" not in plain["cxx"]
    refused = probe(RNNKERNELS_SANITIZE="address,thread")
    assert isinstance(refused, str) and "unknown sanitizer(s) ['thread']" in refused


def test_cuda_emulation_uses_the_sanitize_flags(probe, monkeypatch):
    """tests/cuda_emulation.py compiles with setup.py's flags (at its own -O0)."""
    sys.path.insert(0, str(TESTS))
    try:
        import cuda_emulation
    finally:
        sys.path.remove(str(TESTS))
    result = probe(RNNKERNELS_SANITIZE="address,undefined")
    monkeypatch.setenv("RNNKERNELS_SANITIZE", "address,undefined")
    cflags, ldflags = cuda_emulation.sanitize_flags()
    assert cflags == [f for f in SANITIZE_CFLAGS if f != "-O1"]
    assert ldflags == [f for f in result["link"] if "sanitize" in f]
    monkeypatch.delenv("RNNKERNELS_SANITIZE")
    assert cuda_emulation.sanitize_flags() == ([], [])
