"""Per-sample gradients (what differential-privacy training needs) of an LSTM and a GRU:
torch.func.vmap(grad(loss)) on rnnkernels (Note [transforms], Note [vmap rules]) beside the
two ways a torch.nn user has, since torch.nn's RNN ops have no vmap rule: a Python loop of
ordinary backwards over the samples with torch.nn, and the same loop with rnnkernels.

Each sample is a sequence of its own (batch of one). Interleaved, block by block, medians;
the results of the three are checked equal before timing.

Run: python bench/per_sample_grads.py [--threads 2] [--repeats 7]
"""

import argparse
import platform
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import rnnkernels


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def per_sample_vmap(module, params, x):
    def loss(p, sample):
        return functional_call(module, p, (sample.unsqueeze(1),))[0].pow(2).sum()
    return vmap(grad(loss), in_dims=(None, 1))(params, x)


def per_sample_loop(module, x):
    grads = []
    for b in range(x.shape[1]):
        loss = module(x[:, b:b + 1])[0].pow(2).sum()
        grads.append(torch.autograd.grad(loss, list(module.parameters())))
    return {name: torch.stack([g[i] for g in grads])
            for i, (name, _) in enumerate(module.named_parameters())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, float32")
    print(f"{'case (T, samples, I=H)':<28}{'nn loop ms':>12}{'ours loop ms':>14}"
          f"{'ours vmap ms':>14}{'nn loop / vmap':>16}")
    for cell, (T, samples, hidden) in [("LSTM", (50, 16, 128)), ("GRU", (50, 16, 128)),
                                       ("LSTM", (100, 32, 256))]:
        torch.manual_seed(0)
        theirs = getattr(nn, cell)(hidden, hidden)
        ours = getattr(rnnkernels, cell)(hidden, hidden)
        ours.load_state_dict(theirs.state_dict())
        params = {k: v.detach() for k, v in ours.named_parameters()}
        x = torch.randn(T, samples, hidden)
        runs = {"nn loop": lambda: per_sample_loop(theirs, x),
                "ours loop": lambda: per_sample_loop(ours, x),
                "ours vmap": lambda: per_sample_vmap(ours, params, x)}
        results = {name: run() for name, run in runs.items()}  # also the warm-up
        for name in ("ours loop", "ours vmap"):
            for key in results["nn loop"]:
                torch.testing.assert_close(results[name][key], results["nn loop"][key],
                                           rtol=1e-4, atol=1e-4)
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        print(f"{cell + ' ' + str((T, samples, hidden)):<28}{ms['nn loop']:>12.1f}"
              f"{ms['ours loop']:>14.1f}{ms['ours vmap']:>14.1f}"
              f"{ms['nn loop'] / ms['ours vmap']:>15.2f}x")


if __name__ == "__main__":
    main()
