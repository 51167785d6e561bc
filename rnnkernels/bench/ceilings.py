"""The machine's measured ceilings: one large matrix product per dtype (GFLOP/s) and one
large copy (GB/s), cached in a JSON file (~/.cache/rnnkernels/ceilings.json;
RNNKERNELS_CACHE_DIR or XDG_CACHE_HOME move it) keyed by device, machine (env.machine_name:
the CPU identity, i.e. model name, vendor, family and model numbers and the matrix flags;
or the GPU's name), dtype, thread count and torch version. ``--remeasure-ceilings``
measures again.

Note [trusted ceilings]
A ceiling measured while other work ran is too low, and every fraction of it too high (one
cached during a loaded run was reused later and printed %flop of 150-190%). So each
measurement records the 1-minute load average (the larger of the values before and
after it) and the logical CPU count; a cached entry is reused only when it was measured on
a quiet machine (env.is_loaded: load at most env.LOADED_FRACTION of the CPUs) of the same
identity, else it is measured again; and a value measured under load serves its own run
but is never cached. Both events come back as a ``note`` that the CLI prints on stderr.

Every run measures the float32 and the bfloat16 matmul ceilings (CEILING_DTYPES: the
header names both and each record has its fractions of both), and the ceiling of each
case's compute dtype (ceiling_dtype). float16 on a CPU without float16 matrix hardware
(no avx512_fp16 or amx_fp16 flag) is held against the float32 ceiling: rnnkernels widens
float16 to float32 there, and torch's float16 products accumulate in float32 too.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from . import env as env_mod
from .timing import Clock

# CPU: 2048^3 is 17 GFLOP (about 50 ms at 340 GFLOP/s on 2 cores); the copy moves 2 x 256 MiB.
CPU_MATMUL_N = 2048
CPU_COPY_BYTES = 256 * 2**20
# CUDA: 8192^3 is 1.1 TFLOP (about 1.4 ms at 790 TFLOP/s bf16); the copy moves 2 x 1 GiB.
CUDA_MATMUL_N = 8192
CUDA_COPY_BYTES = 2**30
CEILING_DTYPES = ("float32", "bfloat16")
CPU_FLOAT16_MATRIX_FLAGS = ("avx512_fp16", "amx_fp16")


def cache_path() -> Path:
    base = os.environ.get("RNNKERNELS_CACHE_DIR")
    if base:
        return Path(base) / "ceilings.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "rnnkernels" / "ceilings.json"


def ceiling_key(device: str, dtype: str, threads: int) -> str:
    return "|".join([device, env_mod.machine_name(device), dtype, f"threads={threads}",
                     f"torch={torch.__version__}"])


def ceiling_dtype(compute_dtype: str, device: str) -> str:
    """The dtype whose matmul ceiling a case of this compute dtype is held against."""
    if device == "cpu" and compute_dtype == "float16" and not any(
            flag in env_mod.cpu_flags() for flag in CPU_FLOAT16_MATRIX_FLAGS):
        return "float32"
    return compute_dtype


def _median_seconds(fn, device: str, repeats: int) -> float:
    fn()  # warm-up right before timing (thread pools wake up, caches fill)
    clock = Clock(device)
    return statistics.median(clock.block(fn, 1) for _ in range(repeats))


def measure(device: str, dtype: str, repeats: int = 5) -> dict:
    """Measures the ceilings now, with the current torch thread count."""
    load_before = env_mod.load_average()
    torch_dtype = getattr(torch, dtype)
    n = CUDA_MATMUL_N if device == "cuda" else CPU_MATMUL_N
    if dtype == "int8":  # int8 x int8 -> int32 (torch._int_mm: oneDNN's VNNI/AMX kernels)
        a = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device)
        c = torch.empty(n, n, device=device, dtype=torch.int32)
        matmul_s = _median_seconds(lambda: torch._int_mm(a, b, out=c), device, repeats)
    else:
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
    load_after = env_mod.load_average()
    loads = [x for x in (load_before, load_after) if x is not None]
    loadavg = max(loads) if loads else None
    record = {
        "matmul_gflops": 2 * n**3 / matmul_s / 1e9,  # int8: GOP/s
        "copy_gbs": 2 * copy_bytes / copy_s / 1e9,  # read + write
        "matmul_n": n,
        "copy_bytes": copy_bytes,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "machine": env_mod.machine_name(device),
        "loadavg_1min": loadavg,
        "logical_cpus": os.cpu_count(),
        "loaded": env_mod.is_loaded(loadavg, os.cpu_count()),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device == "cuda":
        record["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return record


def refusal(entry: dict, device: str) -> str | None:
    """Why a cached entry must not be reused (Note [trusted ceilings]); None when it may."""
    machine = env_mod.machine_name(device)
    if entry.get("machine") != machine:
        return f"measured on {entry.get('machine') or 'an unrecorded machine'}, this is {machine}"
    if entry.get("loadavg_1min") is None or not entry.get("logical_cpus"):
        return "measured without a load record"
    if env_mod.is_loaded(entry["loadavg_1min"], entry["logical_cpus"]):
        return f"measured under load {entry['loadavg_1min']} on {entry['logical_cpus']} CPUs"
    return None


def get(device: str, dtype: str, threads: int, remeasure: bool = False, path: Path | None = None) -> dict:
    """The ceilings for this machine and setting: the cached entry when it may be trusted,
    else measured now (and cached unless measured under load). ``note`` says on which
    count a cached entry was refused or a measurement left out of the cache."""
    path = path or cache_path()
    key = ceiling_key(device, dtype, threads)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    notes = []
    if not remeasure and key in cache:
        reason = refusal(cache[key], device)
        if reason is None:
            return dict(cache[key], cached=True, key=key, note=None)
        notes.append(f"cached {dtype} ceiling refused ({reason}), measured again")
    record = measure(device, dtype)
    if record["loaded"]:
        notes.append(f"{dtype} ceiling measured under load {record['loadavg_1min']} on "
                     f"{record['logical_cpus']} CPUs (above {env_mod.LOADED_FRACTION} per CPU): "
                     "used for this run only, not cached; fractions of it read high")
    else:
        cache[key] = record
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError as err:  # a read-only home still gets its numbers, just not cached
            record["cache_error"] = str(err)
    return dict(record, cached=False, key=key, note="; ".join(notes) or None)
