"""The environment block written with every result: what ran, where, and when."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # the repository, when run from one


# The flags that tell which matrix-product hardware a CPU has: the fp32 and bf16 ceilings
# and rnnkernels' kernel choice depend on them, and a VM may hide some of a model's.
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                         "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
CPUINFO_PATH = "/proc/cpuinfo"

# A machine whose 1-minute load average is above this fraction of its logical CPUs is
# running other work: timings are noisy and a ceiling measured then is too low (one
# cached that way later printed %flop of 150-190%). 0.5: two busy threads on a 2-CPU
# machine (our own 2-thread run) already reach it.
LOADED_FRACTION = 0.5


def cpu_info() -> dict:
    """The first processor's entry of /proc/cpuinfo: model_name, vendor, family, model
    (numbers as text, as the kernel prints them) and the flags of CPU_FLAGS_OF_INTEREST
    it lists; model_name from platform elsewhere."""
    fields = {"model name": "model_name", "vendor_id": "vendor", "cpu family": "family",
              "model": "model"}
    info = {"model_name": None, "vendor": None, "family": None, "model": None, "flags": []}
    try:
        with open(CPUINFO_PATH) as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's entry
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                if name in fields:
                    info[fields[name]] = value
                elif name == "flags":
                    present = set(value.split())
                    info["flags"] = [flag for flag in CPU_FLAGS_OF_INTEREST if flag in present]
    except OSError:
        pass
    if not info["model_name"]:
        info["model_name"] = platform.processor() or platform.machine() or "unknown"
    return info


def cpu_flags() -> list[str]:
    """The flags of CPU_FLAGS_OF_INTEREST that /proc/cpuinfo lists."""
    return cpu_info()["flags"]


def cpu_identity(info: dict | None = None) -> str:
    """The CPU model as one string that tells generations apart: a VM's model name can be
    as vague as "AMD EPYC", so the vendor, family and model numbers and the flags of
    interest come with it, e.g. "AMD EPYC (AuthenticAMD family 25 model 17; avx2 fma
    avx512f avx512_bf16)"."""
    info = info or cpu_info()
    numbers = " ".join(f"{name} {info[name]}" for name in ("family", "model") if info.get(name))
    details = " ".join(part for part in (info.get("vendor"), numbers) if part)
    flags = " ".join(info.get("flags") or [])
    inside = "; ".join(part for part in (details, flags) if part)
    return f"{info['model_name']} ({inside})" if inside else info["model_name"]


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
    """What identifies the machine for a device: the GPU's name, or cpu_identity()."""
    if device == "cuda" and torch.cuda.is_available():
        return gpu_name() or "cuda"
    return cpu_identity()


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other work competes for the CPUs."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def is_loaded(loadavg: float | None, logical_cpus: int | None) -> bool:
    """Whether a load average means other work ran (see LOADED_FRACTION); an unknown load
    counts as loaded, so nothing is trusted that cannot be checked."""
    return loadavg is None or loadavg > LOADED_FRACTION * (logical_cpus or 1)


def environment(threads: int, lb_info: dict | None = None) -> dict:
    """torch, rnnkernels build, CPU, GPU, threads, commit and date."""
    import rnnkernels

    info = dict(rnnkernels.build_info())
    info.pop("parallel", None)  # a long multi-line text; threads are recorded below
    cpu = cpu_info()
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "rnnkernels_version": getattr(rnnkernels, "__version__", None),
        "rnnkernels_build": info,
        "cpu_capability": info.get("cpu_capability"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu["model_name"],
        "cpu_identity": cpu_identity(cpu),
        "cpu_class": rnnkernels.backends.cpu.cpu_class,
        "cpu_engine": {k: v for k, v in rnnkernels.backends.cpu.state().items() if k != "last"},
        "cpu": cpu,
        "cpu_flags": cpu["flags"],
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
