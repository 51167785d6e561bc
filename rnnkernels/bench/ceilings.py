"""The machine's measured ceilings: one large matrix product (GFLOP/s) and one large copy
(GB/s), measured once per machine, device, dtype, thread count and torch version, and
cached in a JSON file (~/.cache/rnnkernels/ceilings.json; RNNKERNELS_CACHE_DIR or
XDG_CACHE_HOME move it). ``--remeasure-ceilings`` measures again.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from .env import machine_name
from .timing import Clock

# CPU: 2048^3 is 17 GFLOP (about 50 ms at 340 GFLOP/s on 2 cores); the copy moves 2 x 256 MiB.
CPU_MATMUL_N = 2048
CPU_COPY_BYTES = 256 * 2**20
# CUDA: 8192^3 is 1.1 TFLOP (about 1.4 ms at 790 TFLOP/s bf16); the copy moves 2 x 1 GiB.
CUDA_MATMUL_N = 8192
CUDA_COPY_BYTES = 2**30


def cache_path() -> Path:
    base = os.environ.get("RNNKERNELS_CACHE_DIR")
    if base:
        return Path(base) / "ceilings.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "rnnkernels" / "ceilings.json"


def ceiling_key(device: str, dtype: str, threads: int) -> str:
    return "|".join([device, machine_name(device), dtype, f"threads={threads}",
                     f"torch={torch.__version__}"])


def _median_seconds(fn, device: str, repeats: int) -> float:
    fn()  # warm-up right before timing (thread pools wake up, caches fill)
    clock = Clock(device)
    return statistics.median(clock.block(fn, 1) for _ in range(repeats))


def measure(device: str, dtype: str, repeats: int = 5) -> dict:
    """Measures the ceilings now, with the current torch thread count."""
    torch_dtype = getattr(torch, dtype)
    n = CUDA_MATMUL_N if device == "cuda" else CPU_MATMUL_N
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    c = torch.empty(n, n, device=device, dtype=torch_dtype)
    matmul_s = _median_seconds(lambda: torch.mm(a, b, out=c), device, repeats)
    del a, b, c
    copy_bytes = CUDA_COPY_BYTES if device == "cuda" else CPU_COPY_BYTES
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).view(torch.float32).normal_()
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, repeats)
    del src, dst
    record = {
        "matmul_gflops": 2 * n**3 / matmul_s / 1e9,
        "copy_gbs": 2 * copy_bytes / copy_s / 1e9,  # read + write
        "matmul_n": n,
        "copy_bytes": copy_bytes,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device == "cuda":
        record["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return record


def get(device: str, dtype: str, threads: int, remeasure: bool = False, path: Path | None = None) -> dict:
    """The cached ceilings for this machine and setting, measured first when missing."""
    path = path or cache_path()
    key = ceiling_key(device, dtype, threads)
    cache = {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not remeasure and key in cache:
        return dict(cache[key], cached=True, key=key)
    record = measure(device, dtype)
    cache[key] = record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as err:  # a read-only home still gets its numbers, just not cached
        record["cache_error"] = str(err)
    return dict(record, cached=False, key=key)
