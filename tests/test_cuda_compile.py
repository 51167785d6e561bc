"""The CUDA backend checked without a GPU: compilation, a CPU emulation run, setup.py.

1. Compile check: every csrc/cuda/*.cu is compiled to an object file with this machine's
   nvcc for sm_90, and the host glue csrc/cuda/recurrence_cuda.cpp is syntax-checked with
   g++ against the installed torch headers, so a CUDA compile error fails CI even where no
   GPU (and no CUDA build of torch) exists. A CPU wheel of torch ships the ATen/c10 CUDA
   headers but not the generated c10/cuda/impl/cuda_cmake_macros.h; tests/ci_include holds
   a one-line stand-in. The .cu files include no torch header (kernels.h: sizes, raw
   pointers, a stream). Skipped, with the reason, when nvcc is not installed.
2. CPU emulation (tests/cuda_emulation.py): recurrence_cuda.cpp and the kernel templates
   compiled by g++ with the stand-ins of tests/ci_include/emulation, registered as
   torch.ops.rnnkernels_cuda_emulation.*: the very time loops, row bookkeeping and kernel
   bodies of the CUDA ops, checked against the CPU ops in float64 and against float64 in
   float16/bfloat16. Needs only a C++ compiler.
3. setup.py's CUDA switches (FORCE_CUDA, RNNKERNELS_SKIP_CUDA_BUILD, nvcc missing or of
   another CUDA major, TORCH_CUDA_ARCH_LIST), with torch's CUDA version faked.

The compile jobs and the emulation build run in parallel.
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

import cuda_emulation

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
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit on this machine)")
EMULATION_DIR = cuda_emulation.EMULATION_DIR


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


class _Jobs:
    """The compile jobs and the emulation build, started together on first use."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.pool = ThreadPoolExecutor(os.cpu_count() or 2)
        self.compiles = {}
        if NVCC is not None:
            objects = os.path.join(self.tmp.name, "objects")
            os.makedirs(objects)
            self.compiles = {p.name: self.pool.submit(_compile_cu, p, objects) for p in CU_SOURCES}
            self.compiles.update({p.name: self.pool.submit(_check_host_cpp, p) for p in HOST_SOURCES})
        self.emulation = self.pool.submit(cuda_emulation.build)

    def close(self):
        self.pool.shutdown(wait=True)
        self.tmp.cleanup()


@pytest.fixture(scope="module")
def jobs():
    started = _Jobs()
    yield started
    started.close()


@pytest.fixture(scope="module")
def compiled(jobs):
    """file name -> CompletedProcess of its compile job."""
    return {name: f.result() for name, f in jobs.compiles.items()}


@needs_nvcc
def test_every_dtype_has_a_translation_unit():
    names = {p.name for p in CU_SOURCES}
    assert {"kernels_f32.cu", "kernels_f64.cu", "kernels_f16.cu", "kernels_bf16.cu"} <= names
    assert "recurrence_cuda.cpp" in {p.name for p in HOST_SOURCES}


@needs_nvcc
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


def test_cuda_host_code_refuses_torch_older_than_2_8(tmp_path):
    """Note [cuda torch floor]: recurrence_cuda.cpp, compiled against a torch whose
    torch/version.h says 2.7, stops with the requirement as its first error (the real
    version.h, 2.8 or newer, compiles: the emulation build below)."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "version.h").write_text("#pragma once\n#define TORCH_VERSION_MAJOR 2\n"
                                    "#define TORCH_VERSION_MINOR 7\n#define TORCH_VERSION_PATCH 1\n")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    includes = [str(tmp_path), str(EMULATION_DIR), str(CSRC), str(CSRC / "include")]
    cmd = [cxx, "-std=c++20", "-fsyntax-only", "-Wfatal-errors", "-DRNNKERNELS_CUDA_EMULATION"]
    cmd += [f"-I{p}" for p in includes]
    for p in _torch_include_dirs() + [sysconfig.get_paths()["include"]]:
        cmd += ["-isystem", p]
    result = subprocess.run(cmd + [str(CUDA_DIR / "recurrence_cuda.cpp")], capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode != 0
    assert "need torch >= 2.8" in result.stderr, result.stderr[-4000:]


@needs_nvcc
def test_compile_check_detects_an_error(tmp_path):
    """The harness itself: a broken kernel must fail, so a passing run means something."""
    broken = tmp_path / "broken.cu"
    broken.write_text('#include "cuda/kernels.h"\n'
                      "__global__ void k(float* x) { x[threadIdx.x] = undefined_name; }\n")
    assert _compile_cu(broken, str(tmp_path)).returncode != 0


# ---------------------------------------------------------------- CPU emulation


@pytest.fixture(scope="module")
def emulated(jobs):
    """(the emulation's CUDA recurrences, rnnkernels' CPU recurrences): the CUDA backend's
    recurrences on x_proj (host::Recurrence, bound by csrc/host/recurrence_bindings.h) run
    on the CPU, and the CPU backend's they are checked against."""
    from rnnkernels import _C

    return jobs.emulation.result().recurrence, _C._cpu_recurrence


EMULATION_CASES = [
    dict(cell=cell, directions=d, packed=packed, proj=proj, relu=relu)
    for cell in ("lstm", "gru", "rnn")
    for d in (1, 2)
    for packed in (False, True)
    for proj in ((False, True) if cell == "lstm" else (False,))
    for relu in ((False, True) if cell == "rnn" else (False,))
]
# Packed: rows end at different steps, so the reverse direction starts rows late.
BATCH_SIZES = [4, 4, 3, 1, 1]


def _emulation_args(torch, cell, directions, packed, proj, dtype, steps=5, batch=4, hidden=7):
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    out_size = 3 if proj else hidden
    batch_sizes = torch.tensor(BATCH_SIZES) if packed else None
    rows = sum(BATCH_SIZES) if packed else steps * batch
    rnd = lambda *shape: (0.5 * torch.randn(*shape, dtype=torch.float64)).to(dtype)  # noqa: E731
    return dict(
        x_proj=rnd(rows, directions * gates * hidden),
        w_hh=[rnd(gates * hidden, out_size) for _ in range(directions)],
        b_hh=[rnd(gates * hidden) for _ in range(directions)],
        w_hr=[rnd(out_size, hidden) for _ in range(directions)] if proj else [],
        h0=rnd(directions, batch, out_size), c0=rnd(directions, batch, hidden),
        batch_sizes=batch_sizes)


def _forward_backward(torch, ops, cell, relu, a, grads=None, grad_dtype=None, zoneout=None):
    """Runs the forward op, then the backward op with `grads` (random in grad_dtype when
    None); returns (forward outputs, backward outputs, grads) as flat lists."""
    nl = "relu" if relu else "tanh"
    if cell == "lstm":
        fwd = ops.lstm_forward(a["x_proj"], a["w_hh"], a["b_hh"], a["w_hr"], a["h0"], a["c0"],
                               a["batch_sizes"], True, zoneout)
        n = 3
    elif cell == "gru":
        fwd = ops.gru_forward(a["x_proj"], a["w_hh"], a["b_hh"], a["h0"], a["batch_sizes"], True,
                              zoneout)
        n = 2
    else:
        fwd = ops.rnn_forward(a["x_proj"], a["w_hh"], a["b_hh"], a["h0"], a["batch_sizes"], nl, True,
                              zoneout)
        n = 2
    if grads is None:
        grads = [torch.randn(t.shape, dtype=torch.float64).to(grad_dtype or t.dtype) for t in fwd[:n]]
    if cell == "lstm":
        bwd = ops.lstm_backward(*grads, a["w_hh"], a["b_hh"], a["w_hr"], a["h0"], a["c0"], fwd[0],
                                fwd[3], a["batch_sizes"], zoneout)
    elif cell == "gru":
        bwd = ops.gru_backward(*grads, a["w_hh"], a["b_hh"], a["h0"], fwd[0], fwd[2], a["batch_sizes"],
                               zoneout)
    else:
        bwd = ops.rnn_backward(*grads, a["w_hh"], a["b_hh"], a["h0"], fwd[0], fwd[2], a["batch_sizes"], nl,
                               zoneout)
    return _flat(fwd), _flat(bwd), grads


def _flat(outputs):
    """Tensors and lists of tensors -> one flat list."""
    return [t for item in outputs for t in (item if isinstance(item, (list, tuple)) else [item])]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", EMULATION_CASES, ids=_case_id)
def test_emulated_cuda_ops_match_cpu_ops_float64(emulated, case):
    import torch

    emu, cpu = emulated
    torch.manual_seed(0)
    a = _emulation_args(torch, case["cell"], case["directions"], case["packed"], case["proj"],
                        torch.float64)
    fwd, bwd, grads = _forward_backward(torch, emu, case["cell"], case["relu"], a)
    fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, case["cell"], case["relu"], a, grads)
    # Forward outputs (workspace included) and every gradient.
    assert len(fwd) == len(fwd_ref) and len(bwd) == len(bwd_ref)
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd_ref + bwd_ref)):
        torch.testing.assert_close(got, expected, msg=lambda m, k=k: f"output {k}: {m}")


@pytest.mark.parametrize("weights", ["bernoulli", "broadcast"])
@pytest.mark.parametrize("case", EMULATION_CASES, ids=_case_id)
def test_emulated_cuda_zoneout_matches_cpu_ops_float64(emulated, case, weights):
    # Zoneout weights (Note [zoneout]): Bernoulli draws per row and unit (training), or one
    # row of probabilities broadcast with row stride 0 (evaluation).
    import torch

    emu, cpu = emulated
    torch.manual_seed(2)
    a = _emulation_args(torch, case["cell"], case["directions"], case["packed"], case["proj"],
                        torch.float64)
    rows, p = a["x_proj"].shape[0], a["h0"].shape[2]
    width = p + (a["c0"].shape[2] if case["cell"] == "lstm" else 0)
    if weights == "bernoulli":
        zoneout = torch.empty(case["directions"], rows, width, dtype=torch.float64).bernoulli_(0.4)
    else:
        zoneout = torch.rand(case["directions"], 1, width, dtype=torch.float64).expand(-1, rows, -1)
    fwd, bwd, grads = _forward_backward(torch, emu, case["cell"], case["relu"], a, zoneout=zoneout)
    fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, case["cell"], case["relu"], a, grads,
                                            zoneout=zoneout)
    plain, _, _ = _forward_backward(torch, cpu, case["cell"], case["relu"], a, grads)
    assert not torch.allclose(fwd_ref[0], plain[0])  # zoneout changed the result
    assert len(fwd) == len(fwd_ref) and len(bwd) == len(bwd_ref)
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd_ref + bwd_ref)):
        torch.testing.assert_close(got, expected, msg=lambda m, k=k: f"output {k}: {m}")


@pytest.mark.parametrize("products", ["float", "input"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [c for c in EMULATION_CASES if c["directions"] == 2 and c["packed"]],
                         ids=_case_id)
def test_emulated_cuda_ops_low_precision(emulated, monkeypatch, case, dtype, products):
    # Outputs and gradients in the input dtype, workspace in float32, and a relative error
    # against float64 (on the same rounded inputs) of a few units of roundoff: the 16-bit
    # storage and fp32 math. products: GEMM results in fp32 (mm.dtype_out) or in the input
    # dtype (the fallback should ATen refuse mm.dtype_out at run time).
    import torch

    monkeypatch.setenv("RNNKERNELS_CUDA_LOWP_PRODUCTS", products)
    emu, cpu = emulated
    dt = getattr(torch, dtype)
    unit_roundoff = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    torch.manual_seed(1)
    a = _emulation_args(torch, case["cell"], 2, True, case["proj"], dt)
    fwd, bwd, grads = _forward_backward(torch, emu, case["cell"], case["relu"], a)
    a64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point()
               else [t.double() for t in v] if isinstance(v, list) else v) for k, v in a.items()}
    fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, case["cell"], case["relu"], a64,
                                            [g.double() for g in grads])
    ws = fwd[-1]
    assert ws.dtype == torch.float32
    assert all(t.dtype == dt for t in fwd[:-1] + bwd)
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd_ref + bwd_ref)):
        if expected.numel() == 0:
            continue
        err = ((got.double() - expected).norm() / expected.norm()).item()
        assert err < 8 * unit_roundoff, f"output {k}: relative error {err:.2e}"


@pytest.mark.parametrize("products", ["float", "input"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [c for c in EMULATION_CASES if c["directions"] == 2 and c["packed"]],
                         ids=_case_id)
def test_emulated_forward_reads_float32_x_proj(emulated, monkeypatch, case, dtype, products):
    """Note [cuda x_proj in float32]: with 16-bit weights the forward ops take x_proj in
    float32. Results keep the weights' dtype (workspace float32); a float32 x_proj holding
    16-bit values gives bit for bit what the 16-bit x_proj gives, so the kernels read it as
    they read the 16-bit one; a float32 x_proj with values between 16-bit numbers is within
    a few units of roundoff of the float64 op on it."""
    import torch

    monkeypatch.setenv("RNNKERNELS_CUDA_LOWP_PRODUCTS", products)
    emu, cpu = emulated
    dt = getattr(torch, dtype)
    unit_roundoff = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    a = _emulation_args(torch, case["cell"], 2, True, case["proj"], dt)
    fwd16, bwd16, grads = _forward_backward(torch, emu, case["cell"], case["relu"], a)
    widened = dict(a, x_proj=a["x_proj"].float())
    fwd, bwd, _ = _forward_backward(torch, emu, case["cell"], case["relu"], widened, grads)
    assert fwd[-1].dtype == torch.float32
    assert all(t.dtype == dt for t in fwd[:-1] + bwd)
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd16 + bwd16)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=lambda m, k=k: f"output {k}: {m}")
    if case["relu"]:
        return  # relu's derivative jumps at 0: a rounding of a pre-activation near 0 flips it
    # Values no 16-bit number holds.
    wide = dict(a, x_proj=a["x_proj"].float() + 0.37 * unit_roundoff * torch.randn(a["x_proj"].shape))
    fwd, bwd, _ = _forward_backward(torch, emu, case["cell"], case["relu"], wide, grads)
    a64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point()
               else [t.double() for t in v] if isinstance(v, list) else v) for k, v in wide.items()}
    fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, case["cell"], case["relu"], a64,
                                            [g.double() for g in grads])
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd_ref + bwd_ref)):
        if expected.numel() == 0:
            continue
        err = ((got.double() - expected).norm() / expected.norm()).item()
        assert err < 8 * unit_roundoff, f"output {k}: relative error {err:.2e}"


def test_emulated_forward_float32_x_proj_only_for_16bit_weights(emulated):
    # float32 x_proj with float64 weights is a dtype mismatch, as before; the
    # layer-normalised LSTM's x_side keeps the weights' dtype.
    import torch

    emu, _ = emulated
    a = _emulation_args(torch, "gru", 1, False, False, torch.float64)
    with pytest.raises(RuntimeError, match="w_hh has dtype Double but x_proj has dtype Float"):
        emu.gru_forward(a["x_proj"].float(), a["w_hh"], a["b_hh"], a["h0"], None, True)
    ln = _ln_lstm_inputs(torch, 1, False, 5, 4, True)
    w = _ln_op_args(ln, torch.bfloat16)
    with pytest.raises(RuntimeError, match="ln_hh_weight has dtype BFloat16 but x_side has dtype Float|"
                                           "w_hh has dtype BFloat16 but x_side has dtype Float"):
        emu.layer_norm_lstm_forward(_ln_x_side(torch, ln).detach().float(), w["w_hh"], w["ln_hh"],
                                    w["ln_c_weight"], w["ln_c_bias"], w["h0"], w["c0"], None, True)


# The figures of Note [cuda x_proj in float32]: relative error against float64 of the
# outputs (output, h_n, c_n) of a layer whose x_proj = x W_ih^T + b_ih is handed over in
# float32 (the product's fp32 sums) or rounded to the 16-bit dtype first, averaged over
# seeds; x, W_ih, b_ih and the recurrent weights 16-bit numbers, the reference the float64
# op on the exact x_proj. tests print the table with -s.
def _x_proj_error_gain(torch, emu, cpu, cell, dtype, seeds=4, steps=24, batch=8, inputs=48,
                       hidden=32):
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    errors = {"16-bit": [], "float32": []}
    gradient_errors = {"16-bit": [], "float32": []}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        rnd = lambda *shape, scale=0.5: (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)  # noqa: E731
        x, w_ih, b_ih = rnd(steps * batch, inputs, scale=1.0), rnd(gates * hidden, inputs, scale=0.3), rnd(gates * hidden)
        a = dict(w_hh=[rnd(gates * hidden, hidden, scale=0.3)], b_hh=[rnd(gates * hidden)], w_hr=[],
                 h0=rnd(1, batch, hidden), c0=rnd(1, batch, hidden), batch_sizes=None)
        x_proj32 = x.float() @ w_ih.float().t() + b_ih.float()
        grads = [rnd(steps * batch, hidden, scale=1.0), rnd(1, batch, hidden, scale=1.0)] + (
            [rnd(1, batch, hidden, scale=1.0)] if cell == "lstm" else [])
        a64 = {k: ([t.double() for t in v] if isinstance(v, list) else v.double() if isinstance(v, torch.Tensor) else v)
               for k, v in a.items()}
        a64["x_proj"] = x.double() @ w_ih.double().t() + b_ih.double()
        fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, cell, False, a64, [t.double() for t in grads])
        for mode, x_proj in (("16-bit", x_proj32.to(dtype)), ("float32", x_proj32)):
            fwd, bwd, _ = _forward_backward(torch, emu, cell, False, dict(a, x_proj=x_proj), grads)
            n = 3 if cell == "lstm" else 2
            rel = lambda got, ref: ((got.double() - ref).norm() / ref.norm()).item()  # noqa: E731
            errors[mode].append(sum(rel(f, r) for f, r in zip(fwd[:n], fwd_ref[:n])) / n)
            gradient_errors[mode].append(sum(rel(b, r) for b, r in zip(bwd, bwd_ref)) / len(bwd))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return ({k: mean(v) for k, v in errors.items()}, {k: mean(v) for k, v in gradient_errors.items()})


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_emulated_float32_x_proj_error_gain(emulated, cell, dtype):
    """Why the layers pass x_proj in float32 (Note [cuda x_proj in float32]): rounding it
    to 16 bits first adds a fifth or more to the output error against float64."""
    import torch

    emu, cpu = emulated
    out, grad = _x_proj_error_gain(torch, emu, cpu, cell, getattr(torch, dtype))
    print(f"\n{cell} {dtype}: outputs {out['16-bit']:.3e} (16-bit x_proj) vs {out['float32']:.3e} "
          f"(float32), +{out['16-bit'] / out['float32'] - 1:.0%}; gradients {grad['16-bit']:.3e} vs "
          f"{grad['float32']:.3e}, {grad['16-bit'] / grad['float32'] - 1:+.0%}")
    assert out["16-bit"] > 1.1 * out["float32"], out
    assert grad["float32"] < 1.05 * grad["16-bit"], grad


_PRODUCTS = ("aten::mm", "aten::matmul", "aten::bmm", "aten::addmm")
_16BIT = ("c10::BFloat16", "c10::Half")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [c for c in EMULATION_CASES if c["directions"] == 2 and c["packed"]
                                  and not c["relu"]], ids=_case_id)
def test_emulated_weight_gradients_sum_in_float32(emulated, case, dtype):
    """Note [cuda weight gradients]: the products of the backward that reduce over all N
    rows of a direction (dW_hh, and dW_hr with a projection) take their sums in a float32
    tensor, rounded to the weight's dtype once, not in a 16-bit output that cuBLAS may sum
    in 16 bits (torch's allow_*_reduced_precision_reduction, default True). Inspected in
    the profile of the ATen calls the host code makes: on a GPU the same call is
    mm.dtype_out into float32, here a float32 matmul of the widened operands; a 16-bit
    product over N rows (at::mm_out into the 16-bit gradient) fails. What cuBLAS then does
    with an fp32 output is for a GPU to confirm."""
    import torch
    from torch.profiler import profile

    emu, _ = emulated
    a = _emulation_args(torch, case["cell"], 2, True, case["proj"], getattr(torch, dtype))
    rows = a["x_proj"].shape[0]
    with profile(record_shapes=True) as prof:
        _forward_backward(torch, emu, case["cell"], case["relu"], a)
    over_rows = [e for e in prof.events() if e.name in _PRODUCTS and e.input_shapes
                 and len(e.input_shapes[0]) == 2 and e.input_shapes[0][1] == rows]
    # dW_hh of each direction, and dW_hr of each with a projection, were seen.
    assert len(over_rows) >= 2 * (2 if case["proj"] else 1), [e.name for e in over_rows]
    for e in over_rows:
        assert not set(e.input_dtypes) & set(_16BIT), (
            f"{e.name} {e.input_shapes} {e.input_dtypes}: a product over all {rows} rows "
            "with 16-bit operands or output")


def _long_packed_sizes(torch, steps=150, batch=5):
    """Non-increasing batch sizes over more steps than one launch of the previous-hidden
    gather covers (kGatherSteps, Note [cuda step sizes by value]), with runs that change
    inside and across launch windows."""
    sizes = [batch] * 40 + [4] * 30 + [3] * 25 + [2] * 35 + [1] * (steps - 130)
    return torch.tensor(sizes[:steps])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_emulated_packed_backward_over_many_launch_windows(emulated, cell):
    # The gather of every row's previous hidden state (for dW_hh) over several launch
    # windows, both directions: every result against the CPU ops in float64.
    import torch

    emu, cpu = emulated
    a = _emulation_args(torch, cell, 2, True, False, torch.float64, hidden=3)
    sizes = _long_packed_sizes(torch)
    rows, gates = int(sizes.sum()), {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    a["batch_sizes"] = sizes
    a["x_proj"] = 0.5 * torch.randn(rows, 2 * gates * 3, dtype=torch.float64)
    a["h0"], a["c0"] = (0.5 * torch.randn(2, 5, 3, dtype=torch.float64) for _ in range(2))
    fwd, bwd, grads = _forward_backward(torch, emu, cell, False, a)
    fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, cell, False, a, grads)
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd_ref + bwd_ref)):
        torch.testing.assert_close(got, expected, msg=lambda m, k=k: f"output {k}: {m}")


_COPIES = ("aten::to", "aten::_to_copy", "aten::copy_")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "layer_norm_lstm"])
def test_emulated_packed_backward_copies_no_batch_sizes(emulated, cell):
    """Note [cuda step sizes by value]: the backward of a packed sequence copies no int64
    tensor (batch sizes, offsets) anywhere. A copy from pinned host memory issued per call
    is what a CUDA graph cannot replay: the replay would read the host buffer again, long
    after the caching host allocator has handed it to someone else. The sizes reach the
    gather kernel as values in its launch parameters instead, which a graph keeps. Seen in
    the profile of the ATen calls (the emulation runs the host code as the GPU build does;
    that a captured backward replays correctly is for a GPU to confirm:
    tests/test_cuda.py::test_packed_backward_replays_in_a_cuda_graph)."""
    import torch
    from torch.profiler import profile

    emu, cpu = emulated
    sizes = _long_packed_sizes(torch)
    if cell == "layer_norm_lstm":
        a = _ln_lstm_inputs(torch, 2, True, 5, 4, True)
        x_side, w = _ln_x_side(torch, a).detach(), _ln_op_args(a)
        fwd = emu.layer_norm_lstm_forward(x_side, w["w_hh"], w["ln_hh"], w["ln_c_weight"],
                                          w["ln_c_bias"], w["h0"], w["c0"], a["op_sizes"], True)
        backward = lambda: emu.layer_norm_lstm_backward(  # noqa: E731
            torch.randn_like(fwd[0]), None, None, w["w_hh"], w["ln_hh"], w["ln_c_weight"],
            w["ln_c_bias"], w["h0"], w["c0"], fwd[0], fwd[3], a["op_sizes"])
    else:
        a = _emulation_args(torch, cell, 2, True, cell == "lstm", torch.float32, hidden=3)
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        a["batch_sizes"] = sizes
        a["x_proj"] = torch.randn(int(sizes.sum()), 2 * gates * 3)
        a["h0"], a["c0"] = torch.randn(2, 5, a["h0"].shape[2]), torch.randn(2, 5, 3)
        fwd, _, grads = _forward_backward(torch, emu, cell, False, a)
        backward = lambda: _forward_backward(torch, emu, cell, False, a, grads)  # noqa: E731
    with profile(record_shapes=True) as prof:
        backward()
    copies = [(e.name, e.input_shapes, e.input_dtypes) for e in prof.events()
              if e.name in _COPIES and "long int" in e.input_dtypes]
    assert not copies, f"the packed backward copies int64 tensors: {copies}"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_emulated_cuda_ops_empty_sequence_and_batch(emulated, cell):
    import torch

    emu, cpu = emulated
    for steps, batch in ((0, 4), (0, 0)):
        a = _emulation_args(torch, cell, 2, False, False, torch.float64, steps=steps, batch=batch)
        fwd, bwd, grads = _forward_backward(torch, emu, cell, False, a)
        fwd_ref, bwd_ref, _ = _forward_backward(torch, cpu, cell, False, a, grads)
        for got, expected in zip(fwd + bwd, fwd_ref + bwd_ref):
            torch.testing.assert_close(got, expected)
        torch.testing.assert_close(fwd[1], a["h0"])  # h_n of an empty sequence is h0


def test_emulated_cuda_ops_check_their_arguments(emulated):
    import torch

    emu, _ = emulated
    a = _emulation_args(torch, "lstm", 1, True, False, torch.bfloat16)
    with pytest.raises(RuntimeError, match="w_hh has dtype Float but x_proj has dtype BFloat16"):
        emu.lstm_forward(a["x_proj"], [a["w_hh"][0].float()], a["b_hh"], [], a["h0"], a["c0"],
                         a["batch_sizes"], True)
    out, h_n, c_n, ws = emu.lstm_forward(a["x_proj"], a["w_hh"], a["b_hh"], [], a["h0"], a["c0"],
                                         a["batch_sizes"], True)
    with pytest.raises(RuntimeError, match="needs a Float workspace"):
        emu.lstm_backward(out, None, None, a["w_hh"], a["b_hh"], [], a["h0"], a["c0"], out,
                          ws.to(torch.bfloat16), a["batch_sizes"])
    with pytest.raises(RuntimeError, match="batch_sizes must be non-increasing"):
        emu.lstm_forward(a["x_proj"], a["w_hh"], a["b_hh"], [], a["h0"], a["c0"],
                         torch.tensor([4, 3, 4, 1, 1]), True)


# ---------------------------------------------------------------- layer-normalised LSTM

# The emulated layer_norm_lstm_forward / _backward against rnnkernels.reference.lstm(...,
# layer_norm=...) in float64. Both paths share the inputs: the test builds the op's x_side
# per direction as LN_ih(x W_ih^T) + b_ih + b_hh (Note [layer-normalised LSTM]), and the
# op's grad_x_side flows back through that graph to x, W_ih, b_ih, b_hh and LN_ih's weight.
# grads: which upstream gradients are given ("all"; "output": grad_h_n and grad_c_n None;
# "final": grad_output None).
LN_BATCH_SIZES = [3, 3, 2, 1]  # packed: rows end at different steps
LN_CASES = [
    dict(directions=1, packed=False, hidden=5, steps=4, bias=True, grads="all"),
    dict(directions=2, packed=False, hidden=5, steps=4, bias=True, grads="all"),
    dict(directions=1, packed=True, hidden=17, steps=4, bias=True, grads="all"),
    dict(directions=2, packed=True, hidden=17, steps=4, bias=False, grads="all"),
    dict(directions=2, packed=True, hidden=5, steps=4, bias=True, grads="output"),
    dict(directions=2, packed=False, hidden=17, steps=3, bias=True, grads="final"),
    dict(directions=1, packed=False, hidden=17, steps=1, bias=False, grads="final"),
    dict(directions=2, packed=False, hidden=5, steps=1, bias=True, grads="all"),
]


def _ln_lstm_inputs(torch, directions, packed, hidden, steps, bias, batch=3, input_size=6):
    """Leaf float64 tensors of one layer-normalised LSTM layer (fresh random values, none
    zero), rows layout: x [N, I]; batch_sizes for the reference (always) and the op (None
    when dense)."""
    sizes = LN_BATCH_SIZES if packed else [batch] * steps
    rows, four_h = sum(sizes), 4 * hidden
    rnd = lambda *shape, scale=0.5: (scale * torch.randn(*shape, dtype=torch.float64)).requires_grad_()  # noqa: E731
    gamma = lambda n: (1 + 0.3 * torch.randn(n, dtype=torch.float64)).requires_grad_()  # noqa: E731
    dirs = []
    for _ in range(directions):
        dirs.append(dict(
            w_ih=rnd(four_h, input_size), w_hh=rnd(four_h, hidden),
            b_ih=rnd(four_h) if bias else None, b_hh=rnd(four_h) if bias else None,
            ln_ih=gamma(four_h), ln_hh=gamma(four_h), ln_c_weight=gamma(hidden),
            ln_c_bias=rnd(hidden) if bias else None))
    return dict(x=rnd(rows, input_size, scale=1.0), dirs=dirs, bias=bias,
                h0=rnd(directions, sizes[0], hidden), c0=rnd(directions, sizes[0], hidden),
                sizes=torch.tensor(sizes), op_sizes=torch.tensor(sizes) if packed else None)


def _ln_x_side(torch, a):
    """x_side [N, D*4H] of the op, differentiable w.r.t. x and the input-side parameters."""
    import torch.nn.functional as F

    from rnnkernels.reference import LAYER_NORM_EPS

    cols = []
    for p in a["dirs"]:
        side = F.layer_norm(a["x"] @ p["w_ih"].t(), (p["w_ih"].shape[0],), p["ln_ih"], None,
                            LAYER_NORM_EPS)
        cols.append(side + p["b_ih"] + p["b_hh"] if a["bias"] else side)
    return torch.cat(cols, 1)


def _ln_op_args(a, dtype=None):
    """The op's parameter lists (detached, in dtype when given)."""
    conv = lambda t: t.detach() if dtype is None else t.detach().to(dtype)  # noqa: E731
    dirs = a["dirs"]
    return dict(w_hh=[conv(p["w_hh"]) for p in dirs], ln_hh=[conv(p["ln_hh"]) for p in dirs],
                ln_c_weight=[conv(p["ln_c_weight"]) for p in dirs],
                ln_c_bias=[conv(p["ln_c_bias"]) for p in dirs] if a["bias"] else [],
                h0=conv(a["h0"]), c0=conv(a["c0"]))


def _ln_forward_backward(ops, x_side, w, batch_sizes, grads):
    """The forward op (with workspace), then the backward op; (forward, backward) flat."""
    fwd = ops.layer_norm_lstm_forward(x_side, w["w_hh"], w["ln_hh"], w["ln_c_weight"],
                                      w["ln_c_bias"], w["h0"], w["c0"], batch_sizes, True)
    bwd = ops.layer_norm_lstm_backward(*grads, w["w_hh"], w["ln_hh"], w["ln_c_weight"],
                                       w["ln_c_bias"], w["h0"], w["c0"], fwd[0], fwd[3],
                                       batch_sizes)
    return list(fwd), _flat(bwd)


def _ln_upstream(torch, shapes, grads, dtype=None):
    """Random upstream gradients for (output, h_n, c_n) in dtype (default float64), None
    where `grads` leaves them out."""
    given = {"all": (True, True, True), "output": (True, False, False),
             "final": (False, True, True)}[grads]
    return [torch.randn(shape, dtype=torch.float64).to(dtype or torch.float64) if g else None
            for shape, g in zip(shapes, given)]


@pytest.mark.parametrize("case", LN_CASES, ids=_case_id)
def test_emulated_layer_norm_lstm_matches_reference_float64(emulated, case):
    import torch

    from rnnkernels import reference

    emu, _ = emulated
    a = _ln_lstm_inputs(torch, case["directions"], case["packed"], case["hidden"], case["steps"],
                        case["bias"])
    D, H = case["directions"], case["hidden"]
    x_side = _ln_x_side(torch, a)
    w = _ln_op_args(a)
    N, B = x_side.shape[0], a["h0"].shape[1]
    grads = _ln_upstream(torch, [(N, D * H), (D, B, H), (D, B, H)], case["grads"])
    fwd, bwd = _ln_forward_backward(emu, x_side.detach(), w, a["op_sizes"], grads)
    out, h_n, c_n, ws = fwd
    assert ws.shape == (D, N, 10 * H + 2) and ws.dtype == torch.float64

    # The reference, differentiated by autograd.
    params, layer_norm = [], []
    for p in a["dirs"]:
        params += [p["w_ih"], p["w_hh"]] + ([p["b_ih"], p["b_hh"]] if case["bias"] else [])
        layer_norm += [p["ln_ih"], p["ln_hh"], p["ln_c_weight"]] + (
            [p["ln_c_bias"]] if case["bias"] else [])
    ref = reference.lstm(a["x"], (a["h0"], a["c0"]), params, case["bias"], 1, 0.0, False, D == 2,
                         batch_sizes=a["sizes"], layer_norm=layer_norm)
    for k, (got, expected) in enumerate(zip((out, h_n, c_n), ref)):
        torch.testing.assert_close(got, expected.detach(), msg=lambda m, k=k: f"forward {k}: {m}")
    leaves = [a["x"], a["h0"], a["c0"]] + [p[name] for p in a["dirs"] for name in
                                           ("w_ih", "w_hh", "b_ih", "b_hh", "ln_ih", "ln_hh",
                                            "ln_c_weight", "ln_c_bias") if p[name] is not None]
    given = [(r, g) for r, g in zip(ref, grads) if g is not None]
    expected = torch.autograd.grad([r for r, _ in given], leaves, [g for _, g in given])

    # The op's gradients: grad_x_side through x_side's graph, the rest directly.
    grad_x_side, grad_h0, grad_c0, *lists = bwd
    assert grad_x_side.shape == x_side.shape
    input_leaves = [a["x"]] + [p[name] for p in a["dirs"] for name in ("w_ih", "b_ih", "b_hh",
                                                                       "ln_ih")
                               if p[name] is not None]
    through_x_side = dict(zip(map(id, input_leaves),
                              torch.autograd.grad(x_side, input_leaves, grad_x_side)))
    grad_w_hh, grad_ln_hh, grad_ln_c_weight = lists[:D], lists[D:2 * D], lists[2 * D:3 * D]
    grad_ln_c_bias = lists[3 * D:]
    assert len(grad_ln_c_bias) == (D if case["bias"] else 0)
    direct = {id(a["h0"]): grad_h0, id(a["c0"]): grad_c0}
    for d, p in enumerate(a["dirs"]):
        direct[id(p["w_hh"])] = grad_w_hh[d]
        direct[id(p["ln_hh"])] = grad_ln_hh[d]
        direct[id(p["ln_c_weight"])] = grad_ln_c_weight[d]
        if case["bias"]:
            direct[id(p["ln_c_bias"])] = grad_ln_c_bias[d]
    got = {**through_x_side, **direct}
    assert len(got) == len(leaves)
    for k, (leaf, exp) in enumerate(zip(leaves, expected)):
        torch.testing.assert_close(got[id(leaf)], exp, msg=lambda m, k=k: f"gradient {k}: {m}")


@pytest.mark.parametrize("case", LN_CASES, ids=_case_id)
def test_emulated_layer_norm_lstm_matches_cpu_op_float64(emulated, case):
    """The CUDA host and kernels (emulated) against the CPU kernels, every result of both ops."""
    import torch

    emu, cpu = emulated
    a = _ln_lstm_inputs(torch, case["directions"], case["packed"], case["hidden"], case["steps"],
                        case["bias"])
    x_side = _ln_x_side(torch, a).detach()
    w = _ln_op_args(a)
    D, H, N, B = case["directions"], case["hidden"], x_side.shape[0], a["h0"].shape[1]
    grads = _ln_upstream(torch, [(N, D * H), (D, B, H), (D, B, H)], case["grads"])
    got = _ln_forward_backward(emu, x_side, w, a["op_sizes"], grads)
    with torch.no_grad():
        expected = _ln_forward_backward(cpu, x_side, w, a["op_sizes"], grads)
    for part, (g, e) in enumerate(zip(got, expected)):
        assert len(g) == len(e)
        for k, (gt, et) in enumerate(zip(g, e)):
            torch.testing.assert_close(gt, et, msg=lambda m, part=part, k=k: f"{part}/{k}: {m}")


@pytest.mark.parametrize("products", ["float", "input"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("bias", [True, False])
def test_emulated_layer_norm_lstm_low_precision(emulated, monkeypatch, dtype, products, bias):
    # As test_emulated_cuda_ops_low_precision: outputs and gradients in the input dtype,
    # workspace in float32, relative error against the float64 op (checked against the
    # reference above) on the same rounded inputs of a few units of roundoff: 8 with the
    # GEMM results in fp32. With products in the input dtype (the fallback should ATen
    # refuse mm.dtype_out at run time) the bound is 16: there the recurrent product is rounded to 16
    # bits before layer norm subtracts its mean, and the backward's dR @ W_hh too, and the
    # layer-norm backward amplifies such perturbations of the forward state a few times
    # (in float32 as well: gradients 5-15 units of roundoff where the forward has 2).
    # Measured over 24 random draws, the largest error of any output: fp32 products
    # <= 4.8 units, input-dtype products <= 14.5 (the plain LSTM: <= 1.1 in both modes).
    import torch

    monkeypatch.setenv("RNNKERNELS_CUDA_LOWP_PRODUCTS", products)
    emu, _ = emulated
    dt = getattr(torch, dtype)
    unit_roundoff = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    a = _ln_lstm_inputs(torch, 2, True, 17, 4, bias)
    D, H = 2, 17
    x_side = _ln_x_side(torch, a).detach().to(dt)
    w = _ln_op_args(a, dt)
    N, B = x_side.shape[0], a["h0"].shape[1]
    grads = _ln_upstream(torch, [(N, D * H), (D, B, H), (D, B, H)], "all", dt)
    fwd, bwd = _ln_forward_backward(emu, x_side, w, a["op_sizes"], grads)
    w64 = {k: ([t.double() for t in v] if isinstance(v, list) else v.double())
           for k, v in w.items()}
    fwd_ref, bwd_ref = _ln_forward_backward(emu, x_side.double(), w64, a["op_sizes"],
                                            [g.double() for g in grads])
    assert fwd[3].dtype == torch.float32
    assert all(t.dtype == dt for t in fwd[:3] + bwd)
    assert len(bwd) == len(bwd_ref) == 3 + D * (4 if bias else 3)
    bound = (8 if products == "float" else 16) * unit_roundoff
    for k, (got, expected) in enumerate(zip(fwd + bwd, fwd_ref + bwd_ref)):
        err = ((got.double() - expected).norm() / expected.norm()).item()
        assert err < bound, f"output {k}: relative error {err:.2e}"


def test_emulated_layer_norm_lstm_without_workspace_and_empty(emulated):
    # need_workspace=False runs the same passes through a scratch (same outputs, empty
    # workspace); an empty sequence returns the initial states.
    import torch

    emu, _ = emulated
    a = _ln_lstm_inputs(torch, 2, True, 5, 4, True)
    x_side, w = _ln_x_side(torch, a).detach(), _ln_op_args(a)
    args = (w["w_hh"], w["ln_hh"], w["ln_c_weight"], w["ln_c_bias"], w["h0"], w["c0"],
            a["op_sizes"])
    with_ws = emu.layer_norm_lstm_forward(x_side, *args, True)
    without = emu.layer_norm_lstm_forward(x_side, *args, False)
    assert without[3].shape == (2, 0, 52)
    for got, expected in zip(without[:3], with_ws[:3]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    empty = emu.layer_norm_lstm_forward(x_side[:0], *args[:-1], None, True)
    assert empty[0].shape == (0, 10)
    torch.testing.assert_close(empty[1], w["h0"])
    torch.testing.assert_close(empty[2], w["c0"])
    with pytest.raises(RuntimeError, match=r"ln_c_weight must hold one tensor per direction"):
        emu.layer_norm_lstm_forward(x_side, w["w_hh"], w["ln_hh"], w["ln_c_weight"][:1],
                                    *args[3:], True)


# ---------------------------------------------------------------- setup.py's CUDA switches

# Runs setup.py's top level with setuptools.setup stubbed out, after pretending that torch
# was built with CUDA `argv[1]` ("none": a CPU build) and, with argv[2] == "no-nvcc", that
# no nvcc exists, and (argv[3], when given) that torch's version is argv[3]; prints what
# setup.py decided.
_SETUP_HARNESS = r"""
import runpy, shutil, sys
import setuptools, torch, torch.utils.cpp_extension as ce
setuptools.setup = lambda **kwargs: None
torch.version.cuda = None if sys.argv[1] == "none" else sys.argv[1]
if len(sys.argv) > 3:
    torch.__version__ = sys.argv[3]
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


def _run_setup(torch_cuda: str, cuda_home: str, torch_version: str | None = None,
               **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FORCE_CUDA", "RNNKERNELS_SKIP_CUDA_BUILD", "TORCH_CUDA_ARCH_LIST")}
    full_env.update(env)
    argv = [torch_cuda, cuda_home] + ([torch_version] if torch_version else [])
    return subprocess.run([sys.executable, "-c", _SETUP_HARNESS, *argv],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def _nvcc_home() -> str:
    """A CUDA_HOME whose bin/nvcc is the nvcc found here."""
    return str(Path(NVCC).parent.parent)


def test_setup_force_cuda_without_cuda_torch_fails_early():
    result = _run_setup("none", "no-nvcc", FORCE_CUDA="1")
    assert result.returncode != 0
    assert "FORCE_CUDA=1 but this torch has no CUDA" in result.stderr


@needs_nvcc
def test_setup_without_nvcc_builds_cpu_only():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", "no-nvcc")
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=False" in result.stdout and "nvcc not found" in result.stdout


@needs_nvcc
def test_setup_skip_switch():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home(), RNNKERNELS_SKIP_CUDA_BUILD="1")
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=False" in result.stdout and "RNNKERNELS_SKIP_CUDA_BUILD=1" in result.stdout


@needs_nvcc
def test_setup_mismatched_nvcc_major_fails_early():
    major, _ = _nvcc_release()
    result = _run_setup(f"{major - 1}.8", _nvcc_home())
    assert result.returncode != 0
    assert "the major versions must match" in result.stderr


@needs_nvcc
def test_setup_matching_nvcc_builds_the_cuda_sources():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home())
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=True" in result.stdout
    archs = re.search(r"ARCHS=(.*)", result.stdout).group(1)
    assert archs.split(";") == ["8.0", "9.0+PTX"]
    sources = re.search(r"SOURCES=(.*)", result.stdout).group(1).split(",")
    expected = {str(p.relative_to(ROOT)) for p in CU_SOURCES + HOST_SOURCES}
    assert expected <= set(sources)


def test_default_arch_list_embeds_ptx(monkeypatch, tmp_path):
    """The default TORCH_CUDA_ARCH_LIST ends in +PTX, which torch's extension builder turns
    into a compute_90 PTX image beside the sm_80/sm_90 code: a GPU newer than sm_90 then
    JIT-compiles the kernels instead of finding no kernel image."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    source = (ROOT / "setup.py").read_text()
    default = re.search(r'DEFAULT_CUDA_ARCH_LIST = "([^"]+)"', source).group(1)
    assert default.split(";")[-1].endswith("+PTX"), default
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", default)
    flags = _get_cuda_arch_flags()
    assert "-gencode=arch=compute_90,code=compute_90" in flags, flags
    assert {"-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"} <= set(flags)
    # The CMake build takes setup.py's default from the configuration setup.py writes.
    config = tmp_path / "config.cmake"
    subprocess.run([sys.executable, str(ROOT / "setup.py"), "cmake-config", str(config)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert f'set(RNNKERNELS_DEFAULT_CUDA_ARCH_LIST "{default}")' in config.read_text()
    cmake = (ROOT / "cmake" / "rnnkernels_cuda.cmake").read_text()
    assert 'set(_rk_arch_list "${RNNKERNELS_DEFAULT_CUDA_ARCH_LIST}")' in cmake


@needs_nvcc
@pytest.mark.parametrize("version", ["2.7.1+cu126", "2.4.0"])
def test_setup_refuses_torch_older_than_the_cuda_floor(version):
    # The CUDA host code calls at::mm_out / at::bmm_out with an out dtype (torch >= 2.8).
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home(), version)
    assert result.returncode != 0
    assert "need torch >= 2.8" in result.stderr and "RNNKERNELS_SKIP_CUDA_BUILD=1" in result.stderr


@needs_nvcc
def test_setup_accepts_the_cuda_floor():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home(), "2.8.0+cu128")
    assert result.returncode == 0, result.stderr
    assert "WITH_CUDA=True" in result.stdout


@needs_nvcc
def test_setup_honours_torch_cuda_arch_list():
    major, minor = _nvcc_release()
    result = _run_setup(f"{major}.{minor}", _nvcc_home(), TORCH_CUDA_ARCH_LIST="9.0+PTX")
    assert result.returncode == 0, result.stderr
    assert "ARCHS=9.0+PTX" in result.stdout
