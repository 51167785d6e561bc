"""The environment block written with every result: what ran, where, and when."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # the repository, when run from one


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The vector ISA flags of interest that /proc/cpuinfo lists."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile", "amx_bf16")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def gpu_name() -> str | None:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return None


def git_commit(root: Path = _PACKAGE_ROOT) -> dict | None:
    """HEAD of the repository that holds the imported rnnkernels, and whether it is dirty;
    None when rnnkernels was installed without its repository."""
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        branch = subprocess.run(["git", "-C", str(root), "rev-parse", "--abbrev-ref", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "branch": branch, "dirty": bool(status.strip())}


def machine_name(device: str) -> str:
    """What identifies the machine for a device: the GPU's name, or the CPU's model."""
    if device == "cuda" and torch.cuda.is_available():
        return gpu_name() or "cuda"
    return cpu_model()


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other work competes for the CPUs."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def environment(threads: int, lb_info: dict | None = None) -> dict:
    """torch, rnnkernels build, CPU, GPU, threads, commit and date."""
    import rnnkernels

    info = dict(rnnkernels.build_info())
    info.pop("parallel", None)  # a long multi-line text; threads are recorded below
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "rnnkernels_version": getattr(rnnkernels, "__version__", None),
        "rnnkernels_build": info,
        "cpu_capability": info.get("cpu_capability"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "loadavg_1min": load_average(),  # at the start of the run; each record has its own
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "gpu_name": gpu_name(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # cuDNN's fp32 RNNs may use TF32
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if lb_info:
        env["lower_bound_backend"] = lb_info.get("backend")
        env["blas_version"] = lb_info.get("blas_version")
    return env
