"""How far the layer-normalised LSTM's float32 results can be from float64, and why.

For each seed and size: the largest difference from a float64 run of the reference
(rnnkernels.reference, torch's F.linear / F.layer_norm per step) of
  - our fused kernel in float32,
  - the same reference in float32 (torch's own float32 ops; what an ONNX loop graph runs),
  - the float64 reference itself on an input perturbed by float32 rounding (x * (1 + 6e-8 n)),
and, for scale, the plain LSTM (our kernel in float32 against float64).

The third column needs no float32 arithmetic: when it is as large as the first two, the
model amplifies a rounding-sized change of its input to that size, and no float32
implementation can be closer to float64 than that. The plain LSTM of the same size does not.

    python bench/layer_norm_precision.py [--steps T] [--batch B] [--seeds N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

import rnnkernels
from rnnkernels import reference
from rnnkernels.bench.env import cpu_info

ROUNDING = 6e-8  # float32's unit roundoff, 2**-24


def _reference_output(module, x):
    zeros = torch.zeros(1, x.shape[1], module.hidden_size, dtype=x.dtype)
    layer_norm = [getattr(module, name) for name, _ in module._layer_norm_shapes()]
    return reference.lstm(x, (zeros, zeros.clone()), module._flat_weights, module.bias, 1, 0.0,
                          False, False, False, None, layer_norm=layer_norm)[0]


@torch.no_grad()
def _measure(steps, batch, size, seed):
    torch.manual_seed(seed)
    module = rnnkernels.LSTM(size, size, layer_norm=True).eval()
    plain = rnnkernels.LSTM(size, size).eval()
    x = torch.randn(steps, batch, size)
    module64, plain64, x64 = copy.deepcopy(module).double(), copy.deepcopy(plain).double(), x.double()
    exact = _reference_output(module64, x64)
    perturbed = x64 * (1 + ROUNDING * torch.randn(x64.shape, dtype=torch.float64))

    def gap(result):
        return (result.double() - exact).abs().max().item()

    return {"size": size, "seed": seed,
            "ours_float32": gap(module(x)[0]),
            "torch_ops_float32": gap(_reference_output(module, x)),
            "float64_rounding_perturbed_input": gap(_reference_output(module64, perturbed)),
            "plain_lstm_ours_float32": (plain(x)[0].double() - plain64(x64)[0]).abs().max().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    info = cpu_info()
    print(f"{info['model_name']} (family {info['family']} model {info['model']}), T = {args.steps}, B = {args.batch}, I = H; "
          "largest difference from the float64 reference")
    print(f"{'H':>5} {'seed':>4} {'ours f32':>10} {'torch f32':>10} {'f64, x rounded':>15} "
          f"{'plain LSTM':>11}")
    rows = []
    for size in args.sizes:
        for seed in range(args.seeds):
            row = _measure(args.steps, args.batch, size, seed)
            rows.append(row)
            print(f"{size:>5} {seed:>4} {row['ours_float32']:>10.1e} "
                  f"{row['torch_ops_float32']:>10.1e} "
                  f"{row['float64_rounding_perturbed_input']:>15.1e} "
                  f"{row['plain_lstm_ours_float32']:>11.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpu": info, "steps": args.steps, "batch": args.batch,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
