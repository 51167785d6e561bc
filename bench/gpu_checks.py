"""GPU first-contact checks, one JSON line per case, flushed as each case ends (so a run
cut short still reports). Called by bench/gpu_first_contact.sh; on a machine without a
GPU, `--device cpu` runs the same code on tiny shapes against torch.nn on the CPU, which
is how CI keeps this script from rotting.

    python bench/gpu_checks.py smoke --out smoke.jsonl [--device cuda]
    python bench/gpu_checks.py steps --out steps.jsonl [--device cuda]

smoke: every cell (LSTM, LSTM with proj_size, GRU, RNN tanh and relu, the three cells),
  dense and packed, float32 / bfloat16 / float16 / float64: outputs and every gradient
  against float64 torch.nn on the CPU, and torch.nn on the device (cuDNN) in the same
  dtype. Relative error ||ours - ref|| / ||ref|| per tensor; a case passes when ours is at
  most twice the device torch.nn's error + 1e-6 (float64: 1e-10). Exit status 1 if any
  case failed or raised.
steps: microseconds per time step, ours against cuDNN, forward and forward + backward,
  CUDA events, medians; the host time to issue a forward (until the call returns, before
  synchronising) per step; kernels launched per step (profiler). float32 runs with TF32
  off for both sides, then on for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels

SMOKE_CELLS = {
    "lstm": ("LSTM", {}), "lstm_proj": ("LSTM", dict(proj_size=5)), "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", dict(nonlinearity="relu")),
    "lstm_cell": ("LSTMCell", {}), "gru_cell": ("GRUCell", {}), "rnn_cell": ("RNNCell", {}),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def _emit(out, record: dict) -> None:
    line = json.dumps(record)
    out.write(line + "\n")
    out.flush()
    print(line, flush=True)


def _relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return float((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30))


def _run(module, x, packed_lengths, state_shapes, device, dtype, seed):
    """Outputs and gradients (input, states, parameters) of one call, upstream gradients
    drawn from `seed`, as float64 CPU tensors in a fixed order."""
    module = module.to(device, dtype)
    xs = x.to(device, dtype).requires_grad_()
    feed = xs
    if packed_lengths is not None:
        feed = pack_padded_sequence(xs, packed_lengths, enforce_sorted=False)
    is_cell = x.dim() == 2
    states = [s.to(device, dtype).requires_grad_() for s in state_shapes]
    hx = (tuple(states) if len(states) == 2 else states[0]) if states else None
    result = module(feed, hx)
    if is_cell:
        outs = list(result) if isinstance(result, tuple) else [result]
    else:
        output, hidden = result
        outs = [output.data if packed_lengths is not None else output,
                *(hidden if isinstance(hidden, tuple) else (hidden,))]
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    leaves = [xs, *states, *module.parameters()]
    grads = torch.autograd.grad(outs, leaves, [u.to(device, o.dtype) for u, o in zip(upstream, outs)])
    return [t.detach().double().cpu() for t in (*outs, *grads)]


def smoke(args) -> int:
    device = args.device
    tiny = device == "cpu"
    T, B, I, H = (4, 3, 9, 7) if tiny else (9, 5, 33, 17)
    lengths = torch.tensor([T] + [max(1, T - 2 * i) for i in range(1, B)])[torch.randperm(B)]
    failed = 0
    with open(args.out, "w") as out:
        for name, (cls, options) in SMOKE_CELLS.items():
            is_cell = cls.endswith("Cell")
            for packed in ((False,) if is_cell else (False, True)):
                for dtype_name, dtype in DTYPES.items():
                    record = dict(check="smoke", cell=name, packed=packed, dtype=dtype_name,
                                  device=device)
                    try:
                        torch.manual_seed(0)
                        golden = getattr(nn, cls)(I, H, **options).double()
                        x = torch.randn((B, I) if is_cell else (T, B, I), dtype=torch.float64)
                        P = options.get("proj_size", 0) or H
                        states = ([torch.randn(B, H, dtype=torch.float64)] * (2 if cls == "LSTMCell" else 1)
                                  if is_cell else
                                  [torch.randn(1, B, P, dtype=torch.float64)]
                                  + ([torch.randn(1, B, H, dtype=torch.float64)] if cls == "LSTM" else []))
                        # Low precision: every run gets the same rounded inputs and weights.
                        x_r = x.to(dtype).double()
                        states_r = [s.to(dtype).double() for s in states]
                        golden.load_state_dict({k: v.to(dtype).double() for k, v in golden.state_dict().items()})
                        lens = lengths if packed else None
                        want = _run(golden, x_r, lens, states_r, "cpu", torch.float64, 1)
                        theirs_module = getattr(nn, cls)(I, H, **options)
                        theirs_module.load_state_dict(golden.state_dict())
                        ours_module = getattr(rnnkernels, cls)(I, H, **options)
                        ours_module.load_state_dict(golden.state_dict())
                        theirs = _run(theirs_module, x_r, lens, states_r, device, dtype, 1)
                        ours = _run(ours_module, x_r, lens, states_r, device, dtype, 1)
                        errs_ours = [_relative_error(o, w) for o, w in zip(ours, want)]
                        errs_nn = [_relative_error(t, w) for t, w in zip(theirs, want)]
                        slack = 1e-10 if dtype == torch.float64 else 1e-6
                        ok = all(eo <= 2 * en + slack for eo, en in zip(errs_ours, errs_nn))
                        record.update(ok=ok, max_error_ours=max(errs_ours), max_error_nn=max(errs_nn),
                                      worst_ratio=max(eo / max(en, slack) for eo, en in zip(errs_ours, errs_nn)))
                    except Exception as err:  # a crash of one case is a finding, not the end
                        ok = False
                        record.update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
                    failed += not ok
                    _emit(out, record)
    print(f"smoke: {failed} failed", flush=True)
    return 1 if failed else 0


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, device, repeats):
    """Median milliseconds of fn: CUDA events on the GPU, perf_counter on the CPU."""
    for _ in range(3):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _issue_ms(fn, device, repeats):
    """Median host milliseconds until fn returns (the work it queued not waited for)."""
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    _sync(device)
    return statistics.median(samples)


def _kernels_launched(fn, device) -> int | None:
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)


@contextlib.contextmanager
def _tf32(enabled: bool):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def step_cases(device: str):
    """(label, cell, T, B, H, options, dtype name, tf32, packed)."""
    if device == "cpu":
        return [("lstm-tiny", "LSTM", 8, 4, 16, {}, "float32", False, False),
                ("gru-tiny-packed", "GRU", 8, 4, 16, {}, "bfloat16", False, True)]
    cases = []
    for B in (1, 16, 64, 256):
        for H in (256, 1024):
            cases.append((f"lstm-B{B}-H{H}", "LSTM", 100, B, H, {}, "bfloat16", False, False))
    cases += [
        ("lstm-B16-H512-fp16", "LSTM", 100, 16, 512, {}, "float16", False, False),
        ("lstm-B64-H512-fp32", "LSTM", 100, 64, 512, {}, "float32", False, False),
        ("lstm-B64-H512-tf32", "LSTM", 100, 64, 512, {}, "float32", True, False),
        ("gru-B16-H512", "GRU", 100, 16, 512, {}, "bfloat16", False, False),
        ("gru-B64-H1024", "GRU", 100, 64, 1024, {}, "bfloat16", False, False),
        ("lstm-B64-H512-packed", "LSTM", 100, 64, 512, {}, "bfloat16", False, True),
        ("gru-B64-H512-packed", "GRU", 100, 64, 512, {}, "bfloat16", False, True),
        ("lstm-B32-H512-2l-bi", "LSTM", 100, 32, 512, dict(num_layers=2, bidirectional=True), "bfloat16", False, False),
        ("lstm-B32-H1024-proj256", "LSTM", 100, 32, 1024, dict(proj_size=256), "bfloat16", False, False),
    ]
    return cases


def steps(args) -> int:
    device = args.device
    repeats = 5 if device == "cpu" else args.repeats
    failed = 0
    with open(args.out, "w") as out:
        for label, cls, T, B, H, options, dtype_name, tf32, packed in step_cases(device):
            dtype = DTYPES[dtype_name]
            record = dict(check="steps", case=label, T=T, B=B, H=H, options=options,
                          dtype=dtype_name, tf32=tf32, packed=packed, device=device)
            try:
                torch.manual_seed(0)
                ref = getattr(nn, cls)(H, H, **options).to(device, dtype)
                ours = getattr(rnnkernels, cls)(H, H, **options).to(device, dtype)
                ours.load_state_dict(ref.state_dict())
                x = torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=True)
                lengths = torch.linspace(T, max(1, T // 2), B).long()

                def feed():  # packing is timed on both sides alike
                    return pack_padded_sequence(x, lengths) if packed else x

                def forward(module):
                    with torch.no_grad():
                        return module(feed())

                def training(module):
                    out, _ = module(feed())
                    data = out.data if packed else out
                    data.float().sum().backward()

                with (_tf32(tf32) if device == "cuda" else contextlib.nullcontext()):
                    for name, module in (("ours", ours), ("cudnn", ref)):
                        record[f"{name}_forward_us_per_step"] = 1e3 * _time_ms(lambda: forward(module), device, repeats) / T
                        record[f"{name}_training_us_per_step"] = 1e3 * _time_ms(lambda: training(module), device, repeats) / T
                        record[f"{name}_forward_issue_us_per_step"] = 1e3 * _issue_ms(lambda: forward(module), device, repeats) / T
                        kernels = _kernels_launched(lambda: forward(module), device)
                        record[f"{name}_forward_kernels_per_step"] = None if kernels is None else kernels / T
                record["forward_speedup"] = record["cudnn_forward_us_per_step"] / record["ours_forward_us_per_step"]
                record["training_speedup"] = record["cudnn_training_us_per_step"] / record["ours_training_us_per_step"]
            except Exception as err:
                failed += 1
                record.update(error=f"{type(err).__name__}: {err}"[:500])
            _emit(out, record)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=("smoke", "steps"))
    parser.add_argument("--out", required=True, help="JSON-lines file, written as cases end")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    return smoke(args) if args.check == "smoke" else steps(args)


if __name__ == "__main__":
    sys.exit(main())
