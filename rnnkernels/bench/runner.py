"""Runs cases: times torch.nn and rnnkernels interleaved, the lower bound, the memory, and
assembles one result record per case (the JSON-lines schema, see output.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ceilings as ceilings_mod
from . import lower_bound, memory, model, peers
from .cases import Case
from .timing import time_interleaved
from .workload import (ENGINE_PATHS, build_models, make_inputs, make_pass, profile_engine,
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
    peers: tuple[str, ...] = ()  # deployment runtimes timed beside us (bench/peers.py)


def _ratio(a, b):
    return a / b if a and b else None


def _first_call_errors(passes: dict) -> dict[str, str]:
    """Runs each pass once (a warm-up too); returns torch.nn's error text when it raises
    (e.g. torch 2.13's oneDNN LSTM under CPU float16 autocast): a result to report, not a
    reason to drop the case. Our pass raising fails the case."""
    errors = {}
    for name, run_pass in passes.items():
        try:
            run_pass()
        except Exception as err:  # noqa: BLE001  (whatever torch.nn raises is what we report)
            if name == "ours":
                raise
            errors[name] = f"{type(err).__name__}: {err}"
    return errors


def _ceiling_fractions(gflops: dict, ceilings: dict | None, own_dtype: str) -> dict:
    """frac_{fp32,bf16}_peak_{ours,nn} and frac_peak_flops_{ours,nn} (of the case's own
    ceiling dtype) for the variants' GFLOP/s."""
    def peak(dtype):
        return ceilings and (ceilings.get(dtype) or {}).get("matmul_gflops")

    out = {}
    for name in ("ours", "nn"):
        out[f"frac_fp32_peak_{name}"] = _ratio(gflops[name], peak("float32"))
        out[f"frac_bf16_peak_{name}"] = _ratio(gflops[name], peak("bfloat16"))
        out[f"frac_peak_flops_{name}"] = _ratio(gflops[name], peak(own_dtype))
    return out


def run_case(case: Case, options: RunOptions, env: dict, ceilings: dict | None = None,
             rss_worker: memory.RssWorker | None = None) -> dict:
    """One case -> one record. ceilings: {dtype: ceilings.get() record} of the case's device
    and threads (float32, bfloat16 and the case's ceiling dtype), or None."""
    if torch.get_num_threads() != case.threads:
        torch.set_num_threads(case.threads)
    models = build_models(case, options.seed)
    inputs = make_inputs(case, options.seed + 1)
    passes = {name: make_pass(case, m, inputs) for name, m in models.items()}
    errors = _first_call_errors(passes)
    passes = {name: run_pass for name, run_pass in passes.items() if name not in errors}
    engines = {name: profile_engine(run_pass) for name, run_pass in passes.items()}
    saved = {name: saved_activation_bytes(case, models[name], inputs) for name in passes}
    # An int8 case exports the float32 module (the int8 one has no ONNX form).
    peer_passes, peer_errors = peers.build(case, models["nn" if case.dtype == "int8" else "ours"],
                                           inputs.x, options.peers)
    torch_peers, torch_peer_errors = peers.torch_passes(case, models["nn"], inputs, make_pass)
    peer_passes.update(torch_peers)
    peer_errors.update(torch_peer_errors)

    timings = time_interleaved({**passes, **peer_passes}, options.repeats, device=case.device,
                               min_block_s=options.min_block_s, warmup_s=options.warmup_s)
    lb = lower_bound.measure(case, options.repeats, options.lb_backend) if options.lower_bound else None

    peaks = {"nn": None, "ours": None}
    peak_method = None
    if case.device == "cuda":
        peaks.update({name: memory.cuda_peak_bytes(fn) for name, fn in passes.items()})
        peak_method = memory.METHOD_CUDA
    elif rss_worker is not None:
        peak_method = memory.METHOD_CPU
        for name in passes:
            answer = rss_worker.measure(case, name, options.seed)
            peaks[name] = answer.get("peak_bytes")
            if "error" in answer:
                peak_method = f"{memory.METHOD_CPU} (error: {answer['error']})"
    del passes, models, inputs, peer_passes

    variants = {}
    for name in ("ours", "nn"):
        if name in errors:
            variants[name] = {"median_s": None, "error": errors[name], "engine": None, "path": None}
        else:
            variants[name] = dict(timings[name].to_dict(), engine=engines[name],
                                  path=ENGINE_PATHS.get(engines[name], engines[name]))
    ours, nn_t = variants["ours"]["median_s"], variants["nn"]["median_s"]
    flops = model.gemm_flops(case)
    traffic = model.traffic_bytes(case)
    gflops = {"ours": flops / ours / 1e9, "nn": nn_t and flops / nn_t / 1e9}
    own_dtype = ceilings_mod.ceiling_dtype(case.compute_dtype, case.device)
    own_ceiling = (ceilings or {}).get(own_dtype) or {}
    training = case.mode == "training"
    record = {
        "schema": SCHEMA,
        "key": case.key,
        "case": case.to_dict(),
        "ours": variants["ours"],
        "nn": variants["nn"],
        "lb": lb,
        "speedup": _ratio(nn_t, ours),
        "ours_over_lb": _ratio(ours, lb and lb["median_s"]),
        "nn_over_lb": _ratio(nn_t, lb and lb["median_s"]),
        "per_step_s": ours / case.T,
        "steps_per_s": case.T / ours,
        "gemm_flops": flops,
        "bytes": traffic,
        "gflops_ours": gflops["ours"],
        "gflops_nn": gflops["nn"],
        "gbs_ours": traffic / ours / 1e9,
        "gbs_nn": nn_t and traffic / nn_t / 1e9,
        "ceilings": ceilings,
        "ceiling_dtype": own_dtype,
        **_ceiling_fractions(gflops, ceilings, own_dtype),
        "frac_peak_bw_ours": _ratio(traffic / ours / 1e9, own_ceiling.get("copy_gbs")),
        "memory": {
            "ours_saved_bytes": saved.get("ours") if training else None,
            "nn_saved_bytes": saved.get("nn") if training else None,
            "ours_model_saved_bytes": model.kernel_saved_bytes(case) if training else None,
            "saved_method": "torch.autograd.graph.saved_tensors_hooks: distinct storages saved "
                            "in one training forward, less parameters and input",
            "ours_peak_bytes": peaks["ours"],
            "nn_peak_bytes": peaks["nn"],
            "peak_method": peak_method,
        },
        "env": env,
    }
    if (options.peers and peers.applies(case)) or case.dtype == "int8":
        record["peers"] = {name: {"median_s": timings[name].median,
                                  "speedup_vs_nn": _ratio(nn_t, timings[name].median)}
                           for name in timings if name not in ("ours", "nn")}
        record["peers"].update({name: {"median_s": None, "error": why}
                                for name, why in peer_errors.items()})
        timed = {name: v["median_s"] for name, v in (("ours", variants["ours"]),
                                                     ("nn", variants["nn"]),
                                                     *record["peers"].items())
                 if v.get("median_s")}
        record["fastest"] = min(timed, key=timed.get)
        others = [t for name, t in timed.items() if name != "ours"]
        record["speedup_vs_fastest_other"] = _ratio(min(others), ours) if others else None
    return record


def ceilings_for(cases: list[Case], options: RunOptions) -> dict[tuple, dict[str, dict]]:
    """{(device, threads): {dtype: ceilings.get() record}}: float32 and bfloat16 for every
    device and thread count among the cases, and each case's ceiling dtype."""
    wanted: dict[tuple, list[str]] = {}
    if not options.ceilings:
        return {}
    for case in cases:
        dtypes = wanted.setdefault((case.device, case.threads), list(ceilings_mod.CEILING_DTYPES))
        own = ceilings_mod.ceiling_dtype(case.compute_dtype, case.device)
        if own not in dtypes:
            dtypes.append(own)
    out = {}
    for (device, threads), dtypes in wanted.items():
        torch.set_num_threads(threads)
        out[(device, threads)] = {dtype: ceilings_mod.get(device, dtype, threads,
                                                          remeasure=options.remeasure_ceilings)
                                  for dtype in dtypes}
    return out
