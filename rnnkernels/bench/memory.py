"""Peak memory of one pass.

CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), less what was
allocated before the pass (in the benchmark's own process).

CPU: the resident set's high-water mark (VmHWM) of a separate worker process, which the
benchmark starts once per run (``--memory``) and feeds one (case, variant) at a time.
Why a worker and how it stays sound:
- the high-water mark is per process and never falls on its own, and memory freed to
  malloc is often kept by it, so measuring in the benchmark's process would mix cases;
- the worker runs with MALLOC_MMAP_THRESHOLD_=65536, so every block of 64 KiB or more is
  its own mmap, returned to the system when freed (glibc's threshold otherwise grows
  after frees and later large blocks come from a heap that is not returned);
- per measurement: build the model and inputs, run the pass once (one-time allocations:
  thread pools, oneDNN primitives, packed weights), free its results, malloc_trim(0),
  empty rnnkernels' buffer cache (else the warm-up's buffers would sit in the baseline
  and be reused), reset the high-water mark (writing 5 to /proc/self/clear_refs, Linux >= 4.0), read
  VmRSS as the baseline, run the pass again holding its output, read VmHWM.
- reported: VmHWM - baseline, the extra resident memory the pass needed at its peak
  (activations, saved tensors, gradients of the parameters and the input, scratch).
When clear_refs cannot be written the worker reports no number rather than a wrong one.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import rnnkernels

from .cases import Case

WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
METHOD_CPU = ("VmHWM - VmRSS around one pass, after a warm-up pass, in a worker process "
              "with MALLOC_MMAP_THRESHOLD_=65536")
METHOD_CUDA = "torch.cuda.max_memory_allocated() - memory_allocated() before one pass"


def cuda_peak_bytes(fn) -> int:
    """Extra CUDA memory allocated at the peak of fn()."""
    torch.cuda.synchronize()
    gc.collect()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del result
    return int(peak)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_peak_bytes_here(fn) -> int | None:
    """VmHWM - VmRSS around fn() in this process; None when the mark cannot be reset."""
    gc.collect()
    _malloc_trim()
    rnnkernels.empty_cpu_cache()  # the pass's own buffers count, not the warm-up's reused
    if not _reset_high_water_mark():
        return None
    base = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return (peak - base) * 1024


def _measure_in_worker(request: dict) -> dict:
    from .workload import build_model, make_inputs, make_pass

    case = Case.from_dict(request["case"])
    torch.set_num_threads(case.threads)
    model = build_model(case, request["variant"], request.get("seed", 0))
    inputs = make_inputs(case, request.get("seed", 0) + 1)
    run = make_pass(case, model, inputs)
    run()  # warm-up: one-time allocations are not the pass's memory
    peak = rss_peak_bytes_here(run)
    if peak is None:
        return {"error": "cannot reset the RSS high-water mark (/proc/self/clear_refs)"}
    return {"peak_bytes": peak}


def worker_main() -> None:
    """Reads JSON requests {case, variant, seed} from stdin, answers one JSON line each."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = _measure_in_worker(json.loads(line))
        except Exception as err:  # report, keep serving
            answer = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class RssWorker:
    """The CPU memory worker process; one per benchmark run."""

    def __init__(self):
        env = dict(os.environ, **WORKER_ENV)
        # the worker imports the same rnnkernels as this process, wherever that came from
        package_parent = str(Path(rnnkernels.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnkernels.bench.memory"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env)

    def measure(self, case: Case, variant: str, seed: int = 0) -> dict:
        if self.proc.poll() is not None:
            return {"error": f"memory worker exited with code {self.proc.returncode}"}
        self.proc.stdin.write(json.dumps({"case": case.to_dict(), "variant": variant, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"memory worker exited with code {self.proc.wait()}"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    worker_main()
