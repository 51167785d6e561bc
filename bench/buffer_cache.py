"""python bench/buffer_cache.py [--cell lstm] [--size T B I H] [--repeats 7]: one training
pass (forward + backward, gradients set to None first) of rnnkernels with its CPU buffer
cache on (1 GiB) and off (limit 0), and of torch.nn, interleaved in one process; prints
the median time, the interquartile range, nn/variant and the page faults per pass.

Before each timed cached pass one untimed pass refills the cache that the uncached
variant emptied, so "cache" is the steady state of a training loop.
"""

import argparse
import resource
import statistics
import time

import torch

import rnnkernels

CLASSES = {"lstm": (rnnkernels.LSTM, torch.nn.LSTM), "gru": (rnnkernels.GRU, torch.nn.GRU),
           "rnn": (rnnkernels.RNN, torch.nn.RNN)}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=sorted(CLASSES))
    parser.add_argument("--size", type=int, nargs=4, default=[50, 128, 1024, 1024],
                        metavar=("T", "B", "I", "H"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    T, B, I, H = args.size
    ours_class, nn_class = CLASSES[args.cell]
    torch.manual_seed(0)
    reference = nn_class(I, H)
    ours = ours_class(I, H)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    upstream = torch.randn(T, B, H)

    def training_pass(module):
        params = list(module.parameters())

        def run():
            for p in params:
                p.grad = None
            x.grad = None
            module(x)[0].backward(upstream)
        return run

    ours_pass, nn_pass = training_pass(ours), training_pass(reference)
    limit = 1 << 30

    def cached():
        rnnkernels.set_cpu_cache_limit(limit)
        ours_pass()

    def uncached():
        rnnkernels.set_cpu_cache_limit(0)
        ours_pass()

    variants = {"ours, cache": cached, "ours, no cache": uncached, "torch.nn": nn_pass}
    for run in variants.values():
        run()
    times = {k: [] for k in variants}
    faults = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            if name == "ours, cache":
                cached()
            f0, t0 = minor_faults(), time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
            faults[name].append(minor_faults() - f0)
    rnnkernels.set_cpu_cache_limit(limit)
    nn_median = statistics.median(times["torch.nn"])
    print(f"{args.cell} training (T, B, I, H) = {tuple(args.size)}, {args.threads} threads, "
          f"medians of {args.repeats}")
    for name in variants:
        median = statistics.median(times[name])
        q = statistics.quantiles(times[name], n=4) if args.repeats > 1 else [median] * 3
        print(f"  {name:15s} {1e3 * median:9.2f} ms  iqr {100 * (q[2] - q[0]) / median:5.1f}%  "
              f"nn/this {nn_median / median:5.3f}  faults/pass {statistics.median(faults[name]):.0f}")


if __name__ == "__main__":
    main()
