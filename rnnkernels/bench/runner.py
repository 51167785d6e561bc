"""Runs cases: times torch.nn and rnnkernels interleaved, the lower bound, the memory, and
assembles one result record per case (the JSON-lines schema, see output.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ceilings as ceilings_mod
from . import lower_bound, memory, model
from .cases import Case
from .timing import time_interleaved
from .workload import (build_models, implementation_path, make_inputs, make_pass,
                       saved_activation_bytes)

SCHEMA = "rnnkernels.bench/1"


@dataclass
class RunOptions:
    repeats: int = 11
    min_block_s: float = 0.02
    warmup_s: float = 0.1
    lower_bound: bool = True
    lb_backend: str = "auto"  # auto | blas | torch | python
    memory: bool = False  # CPU peak RSS through the worker (CUDA peaks are always measured)
    ceilings: bool = True
    remeasure_ceilings: bool = False
    seed: int = 0


def _ratio(a, b):
    return a / b if a and b else None


def run_case(case: Case, options: RunOptions, env: dict, ceilings: dict | None = None,
             rss_worker: memory.RssWorker | None = None) -> dict:
    if torch.get_num_threads() != case.threads:
        torch.set_num_threads(case.threads)
    models = build_models(case, options.seed)
    inputs = make_inputs(case, options.seed + 1)
    passes = {name: make_pass(case, m, inputs) for name, m in models.items()}
    paths = {name: implementation_path(case, name, m, inputs) for name, m in models.items()}
    saved = {name: saved_activation_bytes(case, m, inputs) for name, m in models.items()}

    timings = time_interleaved(passes, options.repeats, device=case.device,
                               min_block_s=options.min_block_s, warmup_s=options.warmup_s)
    lb = lower_bound.measure(case, options.repeats, options.lb_backend) if options.lower_bound else None

    peaks = {"nn": None, "ours": None}
    peak_method = None
    if case.device == "cuda":
        peaks = {name: memory.cuda_peak_bytes(fn) for name, fn in passes.items()}
        peak_method = memory.METHOD_CUDA
    elif rss_worker is not None:
        peak_method = memory.METHOD_CPU
        for name in peaks:
            answer = rss_worker.measure(case, name, options.seed)
            peaks[name] = answer.get("peak_bytes")
            if "error" in answer:
                peak_method = f"{memory.METHOD_CPU} (error: {answer['error']})"
    del passes, models, inputs

    ours, nn_t = timings["ours"].median, timings["nn"].median
    flops = model.gemm_flops(case)
    traffic = model.traffic_bytes(case)
    record = {
        "schema": SCHEMA,
        "key": case.key,
        "case": case.to_dict(),
        "ours": dict(timings["ours"].to_dict(), path=paths["ours"]),
        "nn": dict(timings["nn"].to_dict(), path=paths["nn"]),
        "lb": lb,
        "speedup": nn_t / ours,
        "ours_over_lb": _ratio(ours, lb and lb["median_s"]),
        "nn_over_lb": _ratio(nn_t, lb and lb["median_s"]),
        "per_step_s": ours / case.T,
        "steps_per_s": case.T / ours,
        "gemm_flops": flops,
        "bytes": traffic,
        "gflops_ours": flops / ours / 1e9,
        "gflops_nn": flops / nn_t / 1e9,
        "gbs_ours": traffic / ours / 1e9,
        "gbs_nn": traffic / nn_t / 1e9,
        "ceilings": ceilings,
        "frac_peak_flops_ours": _ratio(flops / ours / 1e9, ceilings and ceilings.get("matmul_gflops")),
        "frac_peak_bw_ours": _ratio(traffic / ours / 1e9, ceilings and ceilings.get("copy_gbs")),
        "memory": {
            "ours_saved_bytes": saved["ours"] if case.mode == "training" else None,
            "nn_saved_bytes": saved["nn"] if case.mode == "training" else None,
            "ours_model_saved_bytes": model.kernel_saved_bytes(case) if case.mode == "training" else None,
            "saved_method": "torch.autograd.graph.saved_tensors_hooks: distinct storages saved "
                            "in one training forward, less parameters and input",
            "ours_peak_bytes": peaks["ours"],
            "nn_peak_bytes": peaks["nn"],
            "peak_method": peak_method,
        },
        "env": env,
    }
    return record


def ceilings_for(cases: list[Case], options: RunOptions) -> dict[tuple, dict]:
    """The ceilings of every (device, dtype, threads) among the cases."""
    out = {}
    if not options.ceilings:
        return out
    for case in cases:
        key = (case.device, case.dtype, case.threads)
        if key not in out:
            torch.set_num_threads(case.threads)
            out[key] = ceilings_mod.get(case.device, case.dtype, case.threads,
                                        remeasure=options.remeasure_ceilings)
    return out
