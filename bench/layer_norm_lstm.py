"""The layer-normalised LSTM (LSTM(layer_norm=True)) beside what a user has without it:
the same model written in PyTorch one step at a time (rnnkernels.reference, F.linear and
F.layer_norm per step, autograd for the backward), and torch.nn.LSTM without layer norm
for scale. float32, 2 threads, the three interleaved, medians of 11.

Run: python bench/layer_norm_lstm.py (the README quotes it, section "Beyond torch.nn").
"""

import statistics
import time

import torch
from torch import nn

import rnnkernels
from rnnkernels import reference

CASES = [(100, 32, 256, 256), (200, 16, 128, 128), (100, 1, 256, 256), (50, 64, 512, 512)]
REPEATS = 11


def _seconds(run, training):
    start = time.perf_counter()
    if training:
        out = run()
        out.sum().backward()
    else:
        with torch.inference_mode():
            run()
    return time.perf_counter() - start


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, rnnkernels CPU kernels {rnnkernels._C.cpu_capability()}, "
          f"{torch.get_num_threads()} threads, float32, medians of {REPEATS}")
    for steps, batch, input_size, hidden_size in CASES:
        torch.manual_seed(0)
        ours = rnnkernels.LSTM(input_size, hidden_size, layer_norm=True)
        plain = nn.LSTM(input_size, hidden_size)
        plain.load_state_dict(ours.state_dict(), strict=False)
        x = torch.randn(steps, batch, input_size)
        zeros = torch.zeros(1, batch, hidden_size)
        ln = [getattr(ours, name) for name, _ in ours._layer_norm_shapes()]
        variants = {
            "ours": lambda: ours(x)[0],
            "pytorch": lambda: reference.lstm(x, (zeros, zeros), ours._flat_weights, True, 1,
                                              0.0, True, False, layer_norm=ln)[0],
            "nn.LSTM": lambda: plain(x)[0],
        }
        for training in (False, True):
            times = {k: [] for k in variants}
            for _ in range(2):
                for run in variants.values():
                    _seconds(run, training)
            for _ in range(REPEATS):
                for name, run in variants.items():
                    times[name].append(_seconds(run, training))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            mode = "training " if training else "inference"
            print(f"(T,B,I,H)=({steps},{batch},{input_size},{hidden_size}) {mode}: "
                  f"ours {med['ours']:.2f} ms, PyTorch step loop {med['pytorch']:.2f} ms "
                  f"({med['pytorch'] / med['ours']:.2f}x), nn.LSTM without layer norm "
                  f"{med['nn.LSTM']:.2f} ms (ours/nn.LSTM {med['ours'] / med['nn.LSTM']:.2f})")


if __name__ == "__main__":
    main()
