"""A Markdown table of a results file, for the README and issue notes.

    python -m rnnkernels.bench table results.jsonl

The machine (CPU identity, torch, threads, ceilings) first, then one row per case, in
file order (when a key appears more than once, its last run), with both modes of a shape
side by side: our median time, torch.nn's ("error" where it raised), the ratio nn/ours,
our GFLOP/s and the GEMM lower bound (LB) with torch.nn's time over it.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .output import machine_lines, read_results


def _shape(case: dict) -> str:
    text = f"({case['T']}, {case['B']}, {case['I']}, {case['H']})"
    extras = []
    if case.get("layers", 1) > 1:
        extras.append(f"{case['layers']} layers")
    if case.get("bidirectional"):
        extras.append("bidirectional")
    if case.get("proj"):
        extras.append(f"proj {case['proj']}")
    if case.get("packed"):
        extras.append("packed")
    if case.get("dtype", "float32") != "float32":
        extras.append(case["dtype"])
    return text + (" " + ", ".join(extras) if extras else "")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _cell(record: dict) -> str:
    ours, nn = record["ours"]["median_s"], record["nn"]["median_s"]
    lb = (record.get("lb") or {}).get("median_s")
    gflops = record.get("gflops_ours")
    return " | ".join([
        _ms(ours), "error" if record["nn"].get("error") else _ms(nn),
        f"**{nn / ours:.2f}x**" if nn else "-",
        f"{gflops:.0f}" if gflops else "-",
        _ms(lb), f"{nn / lb:.2f}" if lb and nn else "-",
    ])


def render(records: list[dict], out: TextIO = sys.stdout) -> None:
    latest: dict[str, dict] = {}
    for r in records:
        latest[r["key"]] = r
    rows: dict[tuple, dict[str, dict]] = {}
    for r in latest.values():
        c = r["case"]
        rows.setdefault((c["cell"], _shape(c)), {})[c["mode"]] = r
    modes = [m for m in ("inference", "training") if any(m in v for v in rows.values())]
    for line in machine_lines(list(latest.values())):
        out.write(line + "\n\n")
    header = ["cell", "(T, B, I, H)"]
    for m in modes:
        header += [f"{m} ours ms", "nn ms", "nn/ours", "GFLOP/s", "LB ms", "nn/LB"]
    out.write("| " + " | ".join(header) + " |\n")
    out.write("|" + " --- |" * len(header) + "\n")
    for (cell, shape), by_mode in sorted(rows.items(), key=lambda kv: kv[0][0]):
        cells = [cell, shape]
        for m in modes:
            cells.append(_cell(by_mode[m]) if m in by_mode else " | ".join(["-"] * 6))
        out.write("| " + " | ".join(cells) + " |\n")


PEER_ORDER = ("nn_bf16", "torch_int8", "onnxruntime", "openvino", "openvino_bf16")


def render_peers(records: list[dict], out: TextIO = sys.stdout) -> None:
    """The cases that have peers (int8 cases, `--peers` runs): ms of ours, torch.nn and
    each peer, ours against the fastest other, our GFLOP/s (int8: GOP/s) and its fraction
    of the case's ceiling."""
    latest: dict[str, dict] = {}
    for r in records:
        if r.get("peers"):
            latest[r["key"]] = r
    if not latest:
        return
    names = [n for n in PEER_ORDER if any(n in r["peers"] for r in latest.values())]
    names += sorted({n for r in latest.values() for n in r["peers"]} - set(names))
    header = ["cell", "(T, B, I, H)", "ours ms", "nn ms"] + [f"{n} ms" for n in names] + [
        "ours vs the fastest other", "GFLOP/s", "% of ceiling"]
    out.write("| " + " | ".join(header) + " |\n")
    out.write("|" + " --- |" * len(header) + "\n")
    for r in latest.values():
        c = r["case"]
        peer_ms = [("error" if r["peers"].get(n, {}).get("error") else
                    _ms(r["peers"].get(n, {}).get("median_s"))) for n in names]
        vs = r.get("speedup_vs_fastest_other")
        frac = r.get("frac_peak_flops_ours")
        cells = [c["cell"], _shape(c), _ms(r["ours"]["median_s"]), _ms(r["nn"]["median_s"]),
                 *peer_ms, f"**{vs:.2f}x**" if vs else "-",
                 f"{r['gflops_ours']:.0f}" if r.get("gflops_ours") else "-",
                 f"{100 * frac:.0f}%" if frac else "-"]
        out.write("| " + " | ".join(cells) + " |\n")


def main(path: str) -> int:
    records = read_results(path)
    render(records, sys.stdout)
    if any(r.get("peers") for r in records):
        sys.stdout.write("\n")
        render_peers(records, sys.stdout)
    return 0
