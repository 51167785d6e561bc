"""Per-step product policies on this CPU, one thread: rnnkernels' own register tiles (the
kernels' panel_gemm, float32 and bfloat16) against torch's at::native::cpublas::brgemm
(oneDNN's ukernel: AVX-512, AVX512-BF16 or AMX tiles, whatever the CPU has), at the shapes a
time step issues: M = batch rows, N = gates x hidden (one 64-column block at a time), K =
hidden (+ input with the fused projection).

    python bench/gemm_policies.py [--out bench/results/gemm-policies-<cpu>.json]

Builds bench/gemm_policies.cpp with torch.utils.cpp_extension (about a minute; cached),
with the flags of the avx512_bf16 kernel variant (setup.py ISA_FLAGS): an x86-64 CPU
with AVX-512 is needed to run it. This is benchmark code, not part of rnnkernels._C.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch
from torch.utils.cpp_extension import load

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPES = [(1, 1024, 256), (8, 1024, 256), (16, 512, 128), (32, 1024, 256), (32, 1024, 512),
          (64, 2048, 512), (128, 4096, 1024), (16, 4096, 1024)]


def _isa_flags(name: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    import ast
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ISA_FLAGS" for t in node.targets):
            return ast.literal_eval(node.value)[name]
    raise RuntimeError("ISA_FLAGS not found in setup.py")


def build():
    flags = _isa_flags("avx512_bf16") + ["-O3", "-std=c++20",
                                         "-DRNNKERNELS_ISA_NAMESPACE=bench_policies"]
    return load("rnnkernels_gemm_policies", [str(ROOT / "bench" / "gemm_policies.cpp")],
                extra_cflags=flags, extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "csrc" / "include")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--min-seconds", type=float, default=0.2)
    args = parser.parse_args()
    from rnnkernels.bench.env import environment

    module = build()
    env = environment(1)
    print(f"CPU: {env.get('cpu_model') or env.get('machine')}; torch {torch.__version__}; one thread; GFLOP/s")
    print(f"{'M':>5} {'N':>6} {'K':>6} {'own f32':>9} {'own bf16':>9} {'brgemm f32':>11} {'brgemm bf16':>12}")
    rows = []
    for m, n, k in SHAPES:
        r = module.measure(m, n, k, 64, args.min_seconds)
        rows.append(dict(M=m, N=n, K=k, **r))
        own_bf16 = f"{r['own_bf16']:9.0f}" if "own_bf16" in r else f"{'-':>9}"
        vnni = " (VNNI-packed)" if r["brgemm_bf16_vnni_packed"] else ""
        print(f"{m:>5} {n:>6} {k:>6} {r['own_f32']:9.0f} {own_bf16} {r['brgemm_f32']:11.0f} "
              f"{r['brgemm_bf16']:12.0f}{vnni}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(dict(env=env, rows=rows), indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
