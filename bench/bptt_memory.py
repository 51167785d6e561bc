"""python bench/bptt_memory.py [--preset core] [--threads 2]: what torch.nn and rnnkernels keep
for the backward, per time step, for the training cases of a preset (no timing).

Measured: the distinct storages autograd saves during one training forward, less the
parameters and the input (rnnkernels.bench.workload.saved_activation_bytes, through
torch.autograd.graph.saved_tensors_hooks). Model: rnnkernels' workspace + layer output,
per row LSTM 5H + P, GRU 4H + H, RNN H floats (rnnkernels.bench.model.kernel_saved_bytes).
Prints a Markdown table (bench/README.md quotes it).
"""

import argparse

import torch

from rnnkernels.bench import model, workload
from rnnkernels.bench.cases import PRESETS, preset_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="core", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| cell | (T, B, I, H) | layers, dir | torch.nn KiB/step | rnnkernels KiB/step | model KiB/step "
          "| nn / ours |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for case in preset_cases(args.preset, args.threads, modes=("training",)):
        if case.device != "cpu":
            continue
        models = workload.build_models(case)
        inputs = workload.make_inputs(case)
        saved = {name: workload.saved_activation_bytes(case, m, inputs) for name, m in models.items()}
        del models, inputs
        per_step = {name: value / case.T / 1024 for name, value in saved.items()}
        print(f"| {case.cell} | ({case.T}, {case.B}, {case.I}, {case.H}) | {case.layers}, "
              f"{'bi' if case.bidirectional else 'uni'} | {per_step['nn']:.1f} | {per_step['ours']:.1f} "
              f"| {model.kernel_saved_bytes(case) / case.T / 1024:.1f} | {saved['nn'] / saved['ours']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
