"""The extreme sizes too large for CI (tests/test_extreme_sizes.py has the rest):

1. element offsets past 2**31: an LSTM forward whose output [T*B, 1024] holds 2.15e9
   elements (8.6 GB in float32), compared at sampled steps (one past 2**31), h_n and c_n
   with torch.nn's, which runs it in chunks of 1000 steps carrying the state (in one call
   its oneDNN LSTM asks for 34.7 GB, more than the 24 GB here);
2. 300000 steps at batch 1: LSTM, GRU and RNN forward and backward in float64 against
   torch.nn (outputs, final states and every gradient).

    python bench/extreme_sizes.py [--skip-offsets] [--skip-long]

Prints one line per check and exits with 1 if any failed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch
from torch import nn

import rnnkernels


def offsets_past_2_31() -> bool:
    T, B, H = 16400, 128, 1024
    assert T * B * H > 2**31
    torch.manual_seed(0)
    golden = nn.LSTM(1, H)
    ours = rnnkernels.LSTM(1, H)
    ours.load_state_dict(golden.state_dict())
    x = torch.randn(T, B, 1)
    rows = torch.tensor([0, T // 2, (2**31 // H) // B + 1, T - 1])  # steps; the third past 2^31
    t0 = time.perf_counter()
    with torch.inference_mode():
        out, (h_n, c_n) = ours(x)
        sampled = out[rows].clone()
        del out
        gc.collect()
        rnnkernels.empty_cpu_cache()
        ours_s = time.perf_counter() - t0
        state, chunks = None, []
        for t0_chunk in range(0, T, 1000):
            want, state = golden(x[t0_chunk:t0_chunk + 1000], state)
            keep = rows[(rows >= t0_chunk) & (rows < t0_chunk + 1000)] - t0_chunk
            chunks.append(want[keep].clone())
        want_sampled = torch.cat(chunks)
        want_h, want_c = state
    ok = True
    for name, got, expected in (("sampled rows", sampled, want_sampled), ("h_n", h_n, want_h),
                                ("c_n", c_n, want_c)):
        err = (got - expected).abs().max().item()
        good = torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        ok &= good
        print(f"offsets past 2^31: {name}: max abs difference {err:.3g} -> {'ok' if good else 'FAILED'}")
    print(f"offsets past 2^31: LSTM(1, {H}) forward, T={T}, B={B}: {T * B * H / 2**31:.2f} x 2^31 "
          f"output elements, ours {ours_s:.1f} s")
    return ok


def long_sequences() -> bool:
    ok = True
    for cls in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(1)
        golden = getattr(nn, cls)(2, 3, dtype=torch.float64)
        ours = getattr(rnnkernels, cls)(2, 3, dtype=torch.float64)
        ours.load_state_dict(golden.state_dict())
        x = torch.randn(300_000, 1, 2, dtype=torch.float64)
        results = []
        for module in (ours, golden):
            t0 = time.perf_counter()
            xi = x.clone().requires_grad_()
            out, hidden = module(xi)
            flat = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
            grads = torch.autograd.grad([t.sum() for t in flat], [xi, *module.parameters()])
            results.append(([t.detach() for t in flat] + list(grads), time.perf_counter() - t0))
        worst = max((a - b).abs().max().item() for a, b in zip(results[0][0], results[1][0]))
        good = all(torch.allclose(a, b, rtol=1e-7, atol=1e-7) for a, b in zip(results[0][0], results[1][0]))
        ok &= good
        print(f"300000 steps, batch 1, {cls} float64: max abs difference {worst:.3g} -> "
              f"{'ok' if good else 'FAILED'} (ours {results[0][1]:.1f} s, torch.nn {results[1][1]:.1f} s)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-offsets", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    args = parser.parse_args()
    ok = True
    if not args.skip_long:
        ok &= long_sequences()
    if not args.skip_offsets:
        ok &= offsets_past_2_31()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
