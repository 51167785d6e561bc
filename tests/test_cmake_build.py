"""The CMake build (CMakeLists.txt): its C++ unit tests of the gate math pass under ctest,
and it compiles the extension from the same sources, ISA flags and source hash as setup.py.

test_cmake_extension_matches_setuptools builds the whole extension through CMake (about 90 s
on 2 cores) and requires bit-identical results; RNNKERNELS_SKIP_CMAKE_EXTENSION_TEST=1 skips it.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
NINJA = shutil.which("ninja")
CTEST = shutil.which("ctest")

pytestmark = pytest.mark.skipif(
    CMAKE is None or NINJA is None or CTEST is None,
    reason="cmake, ctest or ninja not found on PATH (pip install cmake ninja)")


def _env(**extra):
    # The CPU part only: CMake's default (RNNKERNELS_WITH_CUDA=OFF), and setup.py's with this;
    # no kernel subset or sanitizer from the caller's environment unless asked for.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RNNKERNELS_ISAS", "RNNKERNELS_SANITIZE")}
    return dict(env, RNNKERNELS_SKIP_CUDA_BUILD="1", **extra)


def _run(cmd, timeout, cwd=None, env=None):
    proc = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (
        f"`{shlex.join(str(c) for c in cmd)}` failed with exit status {proc.returncode}:\n"
        f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def _configure(build_dir, *options, env=None):
    return _run([CMAKE, "-S", ROOT, "-B", build_dir, "-G", "Ninja",
                 f"-DPython_EXECUTABLE={sys.executable}", *options], timeout=120, env=env)


def _build(build_dir, timeout, *targets):
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    target_args = ["--target", *targets] if targets else []
    return _run([CMAKE, "--build", build_dir, "--parallel", jobs, *target_args], timeout=timeout)


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """One configure of the whole project (extension and tests), with compile commands."""
    build_dir = tmp_path_factory.mktemp("cmake-build")
    _configure(build_dir, "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON")
    return build_dir


def test_ctest_gate_math(configured):
    """Build only the C++ tests (not the Python module) and run them: every test must pass,
    and the scalar and portable-SIMD tests, which run on any CPU, must not be skipped."""
    _build(configured, 600, "rnnkernels_tests")
    # cwd instead of --test-dir, which needs CMake 3.20.
    output = _run([CTEST, "--output-on-failure", "--timeout", "120"], timeout=300,
                  cwd=configured)
    status = dict(re.findall(r"Test +#\d+: (\S+) \.+\**\s*(\w[\w ]*?)\s+[\d.]+ sec", output))
    assert status.get("cell_math") == "Passed", output
    assert status.get("vec_math_default") == "Passed", output
    assert all(s in ("Passed", "Skipped") for s in status.values()), output
    assert "0 tests failed" in output, output


def _setup_py_extension(**env):
    """setup.py's extension sources, ISA list and flags, read by running setup.py with
    setuptools.setup replaced."""
    probe = (
        "import json, runpy, setuptools\n"
        "captured = {}\n"
        "setuptools.setup = lambda **kwargs: captured.update(kwargs)\n"
        "g = runpy.run_path('setup.py')\n"
        "ext = captured['ext_modules'][1]\n"
        "print(json.dumps({'sources': ext.sources, 'isas': g['_isas'](),\n"
        "                  'op_sources': g['_op_sources'](),\n"
        "                  'op_library_sources': captured['ext_modules'][0].sources,\n"
        "                  'bench_sources': captured['ext_modules'][2].sources,\n"
        "                  'isa_flags': g['ISA_FLAGS'], 'hash': g['_load_source_hash'](),\n"
        "                  'sanitize': g['_sanitize_flags']()}))\n")
    out = _run([sys.executable, "-c", probe], timeout=120, cwd=ROOT, env=_env(**env))
    return json.loads(out.strip().splitlines()[-1])


def test_cmake_compiles_setup_py_sources(configured):
    """Compare the compile commands of the extension (configured, not built) with what
    setup.py compiles: the same sources, per-ISA flags, extension defines and hash."""
    commands = {Path(entry["file"]).resolve(): shlex.split(entry["command"])
                for entry in json.loads((configured / "compile_commands.json").read_text())
                if Path(entry["file"]).resolve().is_relative_to(ROOT / "csrc")}
    setup = _setup_py_extension()

    isa_sources = {(ROOT / "csrc" / "cpu" / f"kernels_{isa}.cpp").resolve(): isa
                   for isa in setup["isas"]}
    module_sources = {(ROOT / s).resolve() for s in setup["sources"]}
    op_sources = {(ROOT / s).resolve() for s in setup["op_sources"]}
    bench_sources = {(ROOT / s).resolve() for s in setup["bench_sources"]}
    # The op library (_ops): the schemas and the objects of op_sources; _C links it.
    library_sources = {(ROOT / s).resolve() for s in setup["op_library_sources"]}
    assert not library_sources & module_sources
    assert set(commands) == (module_sources | library_sources | op_sources | set(isa_sources)
                             | bench_sources)
    for source in op_sources | library_sources:  # no Python, no extension defines
        argv = commands[source]
        for flag in ("-std=c++20", "-O3"):
            assert flag in argv, f"{source.name}: {flag} missing from {argv}"
        # The objects export their symbols, as BuildExt compiles them: _C calls into _ops.
        assert ("-fvisibility=hidden" in argv) == (source in library_sources), argv
        assert any(a.startswith("-fopenmp") for a in argv), argv
        assert not any("TORCH_EXTENSION_NAME" in a or "include/python3" in a for a in argv), argv

    for source, isa in isa_sources.items():
        argv = commands[source]
        for flag in setup["isa_flags"][isa]:
            assert flag in argv, f"{source.name}: {flag} missing from {argv}"
        assert "-fopenmp" not in argv and not any("TORCH_EXTENSION_NAME" in a for a in argv)
    for source in module_sources:
        argv = commands[source]
        for flag in ("-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
                     "-std=c++20", "-fvisibility=hidden", "-O3"):
            assert flag in argv, f"{source.name}: {flag} missing from {argv}"
        assert any(a.startswith("-fopenmp") for a in argv), argv
        assert not any(a.startswith("-DCPU_CAPABILITY") for a in argv), argv
    build_info = commands[(ROOT / "csrc" / "build_info.cpp").resolve()]
    assert f'-DRNNKERNELS_SOURCE_HASH="{setup["hash"]}"' in build_info, build_info


# Runs LSTM (with and without projection), GRU and RNN (tanh, relu), two layers, both
# directions, float32 and float64, forward and backward, and saves every output and gradient.
_CELLS_SCRIPT = r"""
import json
import sys
import torch
import rnnkernels

CASES = [("lstm", rnnkernels.LSTM, {}), ("lstm_proj", rnnkernels.LSTM, {"proj_size": 5}),
         ("gru", rnnkernels.GRU, {}), ("rnn_tanh", rnnkernels.RNN, {"nonlinearity": "tanh"}),
         ("rnn_relu", rnnkernels.RNN, {"nonlinearity": "relu"})]
results = {}
for name, cls, kwargs in CASES:
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        module = cls(33, 17, num_layers=2, bidirectional=True, **kwargs).to(dtype)
        x = torch.randn(7, 3, 33, dtype=dtype, requires_grad=True)
        y, _ = module(x)
        (y * torch.randn_like(y)).sum().backward()
        results[f"{name}/{dtype}"] = [y.detach(), x.grad] + [p.grad for p in module.parameters()]
torch.save(results, sys.argv[1])
print(rnnkernels._C.__file__)
info = rnnkernels.build_info()
print(json.dumps({"cpu_isas": info["cpu_isas"], "cpu_capability": info["cpu_capability"]}))
"""


def test_cmake_sanitize_flags_match_setup_py(configured, tmp_path):
    """RNNKERNELS_SANITIZE (here from the environment, "," as setup.py takes it) gives every
    compile of the module, the ISA objects and the C++ tests setup.py's sanitizer flags, after
    the build type's -O3, and the module's link the -fsanitize flag."""
    env = _env(RNNKERNELS_SANITIZE="address,undefined")
    _configure(tmp_path, "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", env=env)
    cflags, ldflags = _setup_py_extension(RNNKERNELS_SANITIZE="address,undefined")["sanitize"]
    assert cflags and ldflags == ["-fsanitize=address,undefined"]
    entries = json.loads((tmp_path / "compile_commands.json").read_text())
    files = {Path(e["file"]).name for e in entries}
    assert {"recurrence_cpu.cpp", "kernels_avx512.cpp", "test_cell_math.cpp"} <= files, files
    for entry in entries:
        argv = shlex.split(entry["command"])
        for flag in cflags:
            assert flag in argv, f"{entry['file']}: {flag} missing from {argv}"
        assert argv.index("-O1") > argv.index("-O3"), entry["file"]
    ninja = (tmp_path / "build.ninja").read_text()
    link = re.search(r"build _C\S*\.so: CXX_MODULE_LIBRARY_LINKER.*?\n((?:  .*\n)+)", ninja)
    assert link and f"LINK_FLAGS = {ldflags[0]}" in link.group(1), ninja[:2000]
    # Without it (the module's configuration): no sanitizer anywhere.
    assert "-fsanitize" not in (configured / "compile_commands.json").read_text()


_SKIP_EXTENSION = pytest.mark.skipif(
    os.environ.get("RNNKERNELS_SKIP_CMAKE_EXTENSION_TEST") == "1",
    reason="RNNKERNELS_SKIP_CMAKE_EXTENSION_TEST=1 (these tests build the whole extension "
           "through CMake: about 90 s on 2 cores)")


@pytest.fixture(scope="module")
def setuptools_build(tmp_path_factory):
    """Skips unless rnnkernels/ holds an importable setuptools build to compare with."""
    probe = subprocess.run([sys.executable, "-c", "import rnnkernels"],
                           cwd=tmp_path_factory.mktemp("probe"),
                           env=dict(_env(), PYTHONPATH=str(ROOT)), capture_output=True,
                           text=True, timeout=300)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        error = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        pytest.skip("no importable setuptools build in rnnkernels/ to compare with (run "
                    f"`python setup.py build_ext --inplace` first): {error}")
    return ROOT


def _package_with(module, package_root):
    """A copy of the package at package_root/rnnkernels holding `module` as its _C, with
    the op library built beside it (_C links it)."""
    if (package_root / "rnnkernels").exists():
        shutil.rmtree(package_root / "rnnkernels")
    shutil.copytree(ROOT / "rnnkernels", package_root / "rnnkernels",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if not (package_root / "csrc").exists():
        (package_root / "csrc").symlink_to(ROOT / "csrc")  # keeps _ext.py's stale-source check
    shutil.copy2(module, package_root / "rnnkernels" / module.name)
    for op_library in module.parent.glob("_ops*.so"):
        shutil.copy2(op_library, package_root / "rnnkernels" / op_library.name)
    return package_root


def _run_cells(root, path, cwd, **env):
    """_CELLS_SCRIPT with rnnkernels from `root`; its results, and build_info()."""
    proc = subprocess.run([sys.executable, "-c", _CELLS_SCRIPT, str(path)],
                          env=dict(_env(), PYTHONPATH=str(root), **env), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    module_file, info = proc.stdout.strip().splitlines()[-2:]
    assert module_file.startswith(str(root)), proc.stdout
    import torch
    return torch.load(path), json.loads(info)


def _assert_bit_identical(got, expected):
    import torch

    for key, want in expected.items():
        for index, (a, b) in enumerate(zip(got[key], want)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{key}, tensor {index}")


@pytest.mark.slow
@_SKIP_EXTENSION
def test_cmake_extension_matches_setuptools(configured, setuptools_build, tmp_path):
    """Build _C through CMake, import it from a copy of the package, and compare a forward
    and backward of every cell with the setuptools build in rnnkernels/ (the same code,
    compiled with the same flags, so the results must agree to the last bit)."""
    _build(configured, 1800, "_C", "_ops")
    (module,) = configured.glob("_C*.so")
    package_root = _package_with(module, tmp_path / "root")
    cmake, _ = _run_cells(package_root, tmp_path / "cmake.pt", tmp_path)
    setuptools, _ = _run_cells(ROOT, tmp_path / "setuptools.pt", tmp_path)
    _assert_bit_identical(cmake, setuptools)
    # The op library: the same objects without Python, loadable where rnnkernels is not.
    (op_library,) = configured.glob("_ops*.so")
    assert "torch_python" not in _run(["ldd", str(op_library)], timeout=60)
    _run([sys.executable, "-c", f"import sys, torch; torch.ops.load_library({str(op_library)!r}); "
          "torch.ops.rnnkernels.rnn_layer.default; assert 'rnnkernels' not in sys.modules"],
         timeout=300, cwd=tmp_path)


_RANK = {"default": 0, "avx2": 1, "avx512": 2}


@pytest.mark.slow
@_SKIP_EXTENSION
@pytest.mark.parametrize("subset", ["default", "default;avx512", "avx2"])
def test_cmake_isa_subsets_link_and_run(configured, setuptools_build, tmp_path, subset):
    """Issue 17 point 7: a build of a subset of the kernel variants links, imports and runs
    the best variant it holds (a host that named every variant failed to import). The host
    objects do not depend on the subset, so after the full build each subset only relinks.
    Results are bit-identical to the full setuptools build forced to the same variant."""
    best = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env={k: v for k, v in _env().items() if k != "ATEN_CPU_CAPABILITY"},
        capture_output=True, text=True, check=True).stdout.strip().lower()
    isas = subset.split(";")
    runnable = [i for i in isas if _RANK[i] <= _RANK.get(best, 0)]
    if not runnable:
        pytest.skip(f"this CPU runs at most {best}; the subset {subset} has nothing it can run")
    expected = max(runnable, key=_RANK.get)
    try:
        _configure(configured, f"-DRNNKERNELS_ISAS={subset}")
        _build(configured, 1800, "_C")
        (module,) = configured.glob("_C*.so")
        package_root = _package_with(module, tmp_path / "root")
        # As unforced: the best variant of the subset at or below this CPU's.
        _, info = _run_cells(package_root, tmp_path / "subset.pt", tmp_path,
                             ATEN_CPU_CAPABILITY=best)
        assert info["cpu_isas"] == [i for i in ("default", "avx2", "avx512") if i in isas]
        assert info["cpu_capability"] == expected
        # Values: both forced to that variant, since torch's own elementwise kernels (the
        # input-side ops of functional.py) follow ATEN_CPU_CAPABILITY too.
        got, _ = _run_cells(package_root, tmp_path / "subset.pt", tmp_path,
                            ATEN_CPU_CAPABILITY=expected)
        want, want_info = _run_cells(ROOT, tmp_path / "full.pt", tmp_path,
                                     ATEN_CPU_CAPABILITY=expected)
        assert want_info["cpu_capability"] == expected
        _assert_bit_identical(got, want)
    finally:
        _configure(configured, "-DRNNKERNELS_ISAS=default;avx2;avx512;avx512_bf16")
