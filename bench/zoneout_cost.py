"""What zoneout costs: a training step (forward + backward) with zoneout p=0.1 beside the
same module without it, float32, 2 threads, interleaved, medians of 15.

Run: python bench/zoneout_cost.py (the README quotes it, section "Beyond torch.nn").
"""

import statistics
import time

import torch

import rnnkernels

CASES = [("LSTM", (100, 32, 256, 256)), ("GRU", (100, 32, 256, 256)),
         ("LSTM", (200, 16, 128, 128)), ("RNN", (200, 16, 128, 128))]


def _module(kind, p, input_size, hidden_size):
    options = dict(zoneout_h=p) | (dict(zoneout_c=p) if kind == "LSTM" else {})
    return getattr(rnnkernels, kind)(input_size, hidden_size, **options).train()


def _step_seconds(module, x):
    start = time.perf_counter()
    module(x)[0].sum().backward()
    return time.perf_counter() - start


def main():
    torch.set_num_threads(2)
    for kind, (steps, batch, input_size, hidden_size) in CASES:
        torch.manual_seed(0)
        plain = _module(kind, 0.0, input_size, hidden_size)
        zoned = _module(kind, 0.1, input_size, hidden_size)
        zoned.load_state_dict(plain.state_dict())
        x = torch.randn(steps, batch, input_size)
        for module in (plain, zoned):
            for _ in range(3):
                _step_seconds(module, x)
        times = {"plain": [], "zoned": []}
        for _ in range(15):
            times["plain"].append(_step_seconds(plain, x))
            times["zoned"].append(_step_seconds(zoned, x))
        a, b = (statistics.median(times[k]) for k in ("plain", "zoned"))
        print(f"{kind} (T,B,I,H)=({steps},{batch},{input_size},{hidden_size}) training: "
              f"plain {a * 1e3:.2f} ms, zoneout 0.1 {b * 1e3:.2f} ms, ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
