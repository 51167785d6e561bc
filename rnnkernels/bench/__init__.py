"""rnnkernels.bench: the benchmark and kernel-throughput profiling tool.

    python -m rnnkernels.bench --preset quick          # rnnkernels vs torch.nn, short grid
    python -m rnnkernels.bench --preset core           # the full CPU grid of the core issue
    python -m rnnkernels.bench --preset portable       # float32, bfloat16, bf16 autocast, *Cells
    python -m rnnkernels.bench -T 100 -B 32 -H 256 --cells lstm --modes training
    python -m rnnkernels.bench --cells lstm_cell -B 1 -H 256 --dtype float32 autocast_bfloat16
    python -m rnnkernels.bench plot results.jsonl      # PNG heatmap and time-vs-T (matplotlib)
    python -m rnnkernels.bench compare old.jsonl new.jsonl

Modules: cases (Case, presets), model (GEMM list, FLOPs, bytes), timing (interleaved
medians), lower_bound (the GEMM lower bound), ceilings (fp32/bf16 matmul and copy
ceilings, cached when measured on a quiet machine), env (CPU identity, load, the
environment record), memory (peak memory), workload (the models, passes and engines),
runner (one case -> one record), output (table, JSONL, CSV), compare, plot, progress, cli.
See bench/README.md.
"""

from .cases import PRESETS, Case, custom_cases, preset_cases  # noqa: F401
from .cli import main  # noqa: F401
