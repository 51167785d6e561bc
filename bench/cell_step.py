"""One cell step (rnnkernels.*Cell) beside torch.nn's cell: inference (under
inference_mode) and forward + backward, float32, 2 threads, the two interleaved block by
block, medians of 15 blocks.

Run: python bench/cell_step.py (the README quotes it, section "Limitations").
"""

import statistics
import time

import torch
from torch import nn

import rnnkernels

SIZES = [(1, 32), (1, 256), (16, 128), (64, 512)]  # (batch, hidden = input size)
BLOCKS = 15


def _calls_per_block(seconds_per_call: float) -> int:
    return max(5, min(2000, int(0.02 / max(seconds_per_call, 1e-7))))


def _block_seconds(step, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def _steps(module, x, hx):
    def inference():
        with torch.inference_mode():
            module(x, hx)

    x_leaf = x.clone().requires_grad_()

    def training():
        out = module(x_leaf, hx)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return inference, training


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print("cell      batch hidden   inference us: nn   ours  nn/ours   train us: nn   ours  nn/ours")
    for kind in ("LSTMCell", "GRUCell", "RNNCell"):
        for batch, hidden in SIZES:
            reference = getattr(nn, kind)(hidden, hidden)
            ours = getattr(rnnkernels, kind)(hidden, hidden)
            ours.load_state_dict(reference.state_dict())
            x, h = torch.randn(batch, hidden), torch.randn(batch, hidden)
            hx = (h, h.clone()) if kind == "LSTMCell" else h
            row = []
            for mode in (0, 1):
                theirs_step = _steps(reference, x, hx)[mode]
                ours_step = _steps(ours, x, hx)[mode]
                calls = _calls_per_block(_block_seconds(theirs_step, 20))
                _block_seconds(theirs_step, calls), _block_seconds(ours_step, calls)  # warm-up
                theirs, mine = [], []
                for _ in range(BLOCKS):
                    theirs.append(_block_seconds(theirs_step, calls))
                    mine.append(_block_seconds(ours_step, calls))
                t, o = statistics.median(theirs) * 1e6, statistics.median(mine) * 1e6
                row.append(f"{t:9.1f} {o:7.1f} {t / o:6.2f}x")
            print(f"{kind:9s} {batch:5d} {hidden:6d}   {row[0]}      {row[1]}")


if __name__ == "__main__":
    main()
