"""The lower bound of a case: its matrix products (model.gemm_sequence) issued back to back.

CPU, float32/float64: rnnkernels._bench_C.gemm_sequence_seconds, a C++ loop of MKL
sgemm_/dgemm_ calls (dlsym; at::mm_out where torch has no MKL), Note [gemm lower bound] in
csrc/bench/gemm_lower_bound.cpp. CPU, other dtypes: a Python loop of torch.mm(out=) (it
includes the dispatcher's few microseconds per product, so it is a looser bound). CUDA: the products
captured once in a CUDA graph and replayed, timed with CUDA events (no launch gaps); a
plain stream of torch.mm(out=) when capture fails. Runs with the thread count of the run,
in the case's compute dtype (an autocast case's products run in the autocast dtype).
"""

from __future__ import annotations

import statistics
import time

import torch

from . import model
from .cases import Case
from .timing import Clock, iqr


def _buffers(shapes: list[list[int]], dtype: torch.dtype, device: str):
    cache: dict[tuple, tuple] = {}
    products = []
    for shape in shapes:
        key = tuple(shape)
        if key not in cache:
            m, n, k, trans_a, trans_b = shape
            a = (torch.randn(k, m, device=device).t() if trans_a else torch.randn(m, k, device=device)) * 0.1
            b = (torch.randn(n, k, device=device).t() if trans_b else torch.randn(k, n, device=device)) * 0.1
            cache[key] = (a.to(dtype), b.to(dtype), torch.empty(m, n, device=device, dtype=dtype))
        products.append(cache[key])
    return products


def _torch_cpu_seconds(shapes, repeats, dtype) -> list[float]:
    if dtype == "int8":  # int8 x int8 -> int32 products (torch._int_mm)
        products = [(a.mul(1000).clamp(-127, 127).to(torch.int8),
                     b.mul(1000).clamp(-127, 127).to(torch.int8),
                     torch.empty(c.shape, dtype=torch.int32))
                    for a, b, c in _buffers(shapes, torch.float32, "cpu")]
        mm = torch._int_mm
    else:
        products = _buffers(shapes, getattr(torch, dtype), "cpu")
        mm = torch.mm

    def run():
        for a, b, c in products:
            mm(a, b, out=c)

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def _cuda_seconds(shapes, repeats, dtype) -> tuple[list[float], str]:
    products = _buffers(shapes, getattr(torch, dtype), "cuda")

    def run():
        for a, b, c in products:
            torch.mm(a, b, out=c)

    backend = "cuBLAS via torch.mm, CUDA graph"
    run()  # warm-up; cuBLAS picks its kernels and workspace outside the capture
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run()  # warm-up on the capture stream, as torch's graph docs ask
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            run()
        replay = graph.replay
        replay()
    except Exception:  # noqa: BLE001  (capture is an optimisation; the stream still bounds)
        backend = "cuBLAS via torch.mm, stream (graph capture failed)"
        replay = run
    clock = Clock("cuda")
    return [clock.block(replay, 1) for _ in range(repeats)], backend


def measure(case: Case, repeats: int, backend: str = "auto") -> dict:
    """{'median_s', 'iqr_s', 'samples_s', 'backend', 'products', ...} for one pass."""
    shapes = model.gemm_sequence(case)
    dtype = case.compute_dtype
    info: dict = {}
    if case.device == "cuda":
        samples, used = _cuda_seconds(shapes, repeats, dtype)
    elif dtype in ("float32", "float64") and backend != "python":
        from rnnkernels import _bench_C

        result = _bench_C.gemm_sequence_seconds(shapes, repeats, dtype, 1, backend)
        samples, used = list(result["seconds"]), result["backend"]
        info = {"blas_version": result["blas_version"], "threads": result["threads"]}
    else:
        samples, used = _torch_cpu_seconds(shapes, repeats, dtype), "torch.mm loop (Python)"
    return dict(info, median_s=statistics.median(samples), iqr_s=iqr(samples), samples_s=samples,
                backend=used, products=len(shapes))
