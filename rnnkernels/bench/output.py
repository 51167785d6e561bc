"""Result files and the printed table.

JSON lines (``.jsonl``): one record per case, self-contained (each carries the
environment block), so files from several runs can be concatenated. Fields:
  schema            "rnnkernels.bench/1"
  key               the case's stable name (cases.Case.key), used by compare
  case              cell, T, B, I, H, layers, bidirectional, proj, mode, dtype, device,
                    threads, packed
  ours, nn          median_s, iqr_s, samples_s (seconds per pass, one per timed block),
                    number (passes per block), repeats, engine (what ran, profiled on the
                    case's own pass: rnnk, torch:oneDNN, torch:cuDNN, torch:native; '+'
                    joins engines of one call), path (the same in the old words: rnnkernels,
                    oneDNN, cuDNN, ATen native); when torch.nn raises: median_s null and
                    error (its exception, e.g. oneDNN's LSTM under CPU float16 autocast)
  lb                the lower bound: median_s, iqr_s, samples_s, backend, products,
                    blas_version; null with --no-lb
  speedup           nn median / ours median (null when torch.nn raised)
  ours_over_lb, nn_over_lb
  per_step_s, steps_per_s                    ours
  gemm_flops, bytes                          the work model (model.py)
  gflops_ours, gflops_nn, gbs_ours, gbs_nn
  ceilings          {dtype: matmul_gflops, copy_gbs, machine, loadavg_1min, logical_cpus,
                    loaded, key, measured, cached, note} for float32, bfloat16 and the
                    case's ceiling dtype; null with --no-ceilings
  ceiling_dtype     the dtype whose ceiling is the case's own (ceilings.ceiling_dtype)
  frac_peak_flops_ours, frac_peak_flops_nn   of the case's own ceiling
  frac_fp32_peak_ours, frac_fp32_peak_nn, frac_bf16_peak_ours, frac_bf16_peak_nn
  frac_peak_bw_ours
  memory            ours/nn_saved_bytes (training), ours_model_saved_bytes, saved_method,
                    ours/nn_peak_bytes, peak_method
  loadavg_1min      the machine's 1-minute load average when the case finished
  env               env.environment(): torch, build_info, CPU (cpu_model, cpu_identity, cpu:
                    model_name, vendor, family, model, flags), ISA, threads, GPU, git
                    commit, date, load average at the start
CSV (``.csv``): the same records flattened, one column per leaf (``ours.median_s``,
``env.git.commit``); lists as JSON text; empty cells for null; read back with
numbers parsed except in text columns (STRING_LEAVES).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Iterable, TextIO


# ---------------------------------------------------------------- files

def write_jsonl(records: Iterable[dict], path: Path | str, append: bool = False) -> None:
    with open(path, "a" if append else "w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=False) + "\n")


def append_jsonl(record: dict, path: Path | str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


# Leaves that are text even when they look like numbers (a commit "1234e567" is not 1.2e570).
STRING_LEAVES = {"key", "commit", "branch", "source_hash", "cpu_model", "cpu_identity", "model_name",
                 "vendor", "family", "model", "machine", "gpu_name", "date", "blas_version",
                 "torch_version", "python", "platform", "engine", "path", "error", "note"}


def _parse_cell(text: str, column: str = ""):
    if text == "":
        return None
    if column.rsplit(".", 1)[-1] in STRING_LEAVES:
        return text
    if text in ("true", "false"):
        return text == "true"
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def write_csv(records: list[dict], path: Path | str) -> None:
    rows = [flatten(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_cell(row.get(c)) for c in columns})


def read_results(path: Path | str) -> list[dict]:
    """Records from a .jsonl or .csv results file (CSV rows are unflattened back)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        records = []
        for row in reader:
            flat = {k: _parse_cell(v, k) for k, v in row.items() if k is not None}
            # a column absent from this row's record was written empty: drop it
            records.append(unflatten({k: v for k, v in flat.items() if v is not None}))
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    return records


# ---------------------------------------------------------------- table

def _ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _num(value, fmt="{:.3g}"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _mb_pair(a, b):
    if a is None and b is None:
        return "-"
    return f"{_num(a and a / 2**20, '{:.1f}')}/{_num(b and b / 2**20, '{:.1f}')}"


DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64",
                "autocast_bfloat16": "ac-bf16", "autocast_float16": "ac-fp16", "int8": "int8"}


def _case_label(r: dict) -> str:
    c = r["case"]
    extra = []
    if c.get("layers", 1) > 1:
        extra.append(f"L{c['layers']}")
    if c.get("bidirectional"):
        extra.append("bi")
    if c.get("proj"):
        extra.append(f"P{c['proj']}")
    if c.get("packed"):
        extra.append("packed")
    if c.get("dtype", "float32") != "float32":
        extra.append(DTYPE_LABELS.get(c["dtype"], c["dtype"]))
    if c.get("device", "cpu") != "cpu":
        extra.append(c["device"])
    mode = {"inference": "inf", "training": "train"}.get(c["mode"], c["mode"])
    tail = (" " + ",".join(extra)) if extra else ""
    return f"{c['cell']:<9} {mode:<5} {c['T']:>4} {c['B']:>3} {c['I']:>4} {c['H']:>4}{tail}"


def _fallback_mark(r: dict) -> str:
    """'*' when our module ran anything but rnnkernels' own kernels."""
    ours = r.get("ours", {})
    if "engine" in ours:
        return "" if ours["engine"] == "rnnk" else "*"
    return "*" if ours.get("path") not in (None, "rnnkernels") else ""


def _case_ceilings(r: dict) -> dict:
    """{dtype: ceiling record} of a record; an old record's single ceiling keyed by its dtype."""
    ceilings = r.get("ceilings") or {}
    return {ceilings.get("dtype"): ceilings} if "matmul_gflops" in ceilings else ceilings


def _own_peak_fraction(r: dict) -> str:
    """Ours' fraction of the case's own ceiling; '!' when that ceiling was measured under load."""
    loaded = (_case_ceilings(r).get(r.get("ceiling_dtype")) or {}).get("loaded")
    return _pct(r.get("frac_peak_flops_ours")) + ("!" if loaded else "")


def _nn_ms(r: dict) -> str:
    return "error" if r["nn"].get("error") else _ms(r["nn"]["median_s"])


# (header, width, value of a record)
COLUMNS = [
    ("ours ms", 8, lambda r: _ms(r["ours"]["median_s"]) + _fallback_mark(r)),
    ("iqr", 5, lambda r: _pct(r["ours"]["iqr_s"] / r["ours"]["median_s"]) if r["ours"]["median_s"] else "-"),
    ("nn ms", 8, _nn_ms),
    ("nn/ours", 7, lambda r: _num(r.get("speedup"), "{:.2f}x")),
    ("engine", 12, lambda r: r["ours"].get("engine") or "-"),
    ("nn engine", 12, lambda r: r["nn"].get("engine") or "-"),
    ("LB ms", 7, lambda r: _ms(r["lb"]["median_s"]) if r.get("lb") else "-"),
    ("ours/LB", 7, lambda r: _num(r.get("ours_over_lb"))),
    ("nn/LB", 6, lambda r: _num(r.get("nn_over_lb"))),
    ("us/step", 7, lambda r: _num(r["per_step_s"] * 1e6, "{:.3g}")),
    ("steps/s", 7, lambda r: _num(r["steps_per_s"], "{:.3g}")),
    ("GFLOP/s", 7, lambda r: _num(r["gflops_ours"], "{:.3g}")),
    ("%flop", 7, _own_peak_fraction),
    ("GB/s", 6, lambda r: _num(r["gbs_ours"], "{:.3g}")),
    ("%bw", 6, lambda r: _pct(r.get("frac_peak_bw_ours"))),
    ("saved MB o/nn", 13, lambda r: _mb_pair(r["memory"].get("ours_saved_bytes"), r["memory"].get("nn_saved_bytes"))),
    ("peak MB o/nn", 13, lambda r: _mb_pair(r["memory"].get("ours_peak_bytes"), r["memory"].get("nn_peak_bytes"))),
]
CASE_HEADER = f"{'cell':<9} {'mode':<5} {'T':>4} {'B':>3} {'I':>4} {'H':>4}"
CASE_WIDTH = 44

LEGEND = """\
ours ms / nn ms: median time of one pass (forward under inference_mode, or forward + backward),
  rnnkernels and torch.nn timed interleaved in this run; iqr: interquartile range of ours / median;
  * after ours: our module ran torch's engine (see engine); nn ms "error": torch.nn raised (the
  error is in the JSON, and listed above). *Cells (lstm_cell, gru_cell, rnn_cell): one call, T = 1.
dtypes: bf16/fp16 modules and input converted; ac-bf16/ac-fp16 float32 modules under autocast.
nn/ours: speedup. engine: what ran, profiled on the case's pass (rnnk: rnnkernels' kernels;
  torch:oneDNN, torch:cuDNN, torch:native: torch's own). LB: the case's matrix products issued
  back to back (MKL on CPU, cuBLAS on CUDA).
us/step, steps/s, GFLOP/s (matrix-product FLOPs), GB/s (compulsory bytes): ours.
%flop: of the measured matmul ceiling of the case's compute dtype (float32 cases the fp32 one,
  bfloat16 and autocast bfloat16 the bf16 one, float16 on a CPU without fp16 matrix hardware the
  fp32 one), both ceilings named at the top; ! marks a ceiling measured under load (not cached,
  so the fraction reads high). %bw: of the measured copy ceiling.
saved MB: tensors autograd keeps for the backward (training); peak MB: extra memory at the peak
  of one pass (CPU: resident set in a worker, with --memory; CUDA: max_memory_allocated)."""


def _ceilings_text(ceilings: dict | None) -> str:
    if not ceilings:
        return "ceilings not measured"
    peaks = ", ".join(f"{DTYPE_LABELS.get(dtype, dtype)} "
                      f"{record['matmul_gflops']:.0f}{'!' if record.get('loaded') else ''}"
                      for dtype, record in ceilings.items())
    copy = next(iter(ceilings.values()))["copy_gbs"]
    return f"matmul ceilings GFLOP/s {peaks}; copy {copy:.1f} GB/s"


def machine_line(env: dict, ceilings: dict | None) -> str:
    """The CPU (GPU), torch, threads and ceilings ({dtype: record}) a table's numbers are of."""
    cpu = env.get("cpu_identity") or env.get("cpu_model") or "unknown CPU"
    gpu = f"; GPU: {env['gpu_name']}" if env.get("gpu_name") else ""
    return (f"CPU: {cpu}{gpu}; torch {env.get('torch_version')}, {env.get('threads')} threads; "
            f"{_ceilings_text(ceilings)}")


def machine_lines(records: list[dict]) -> list[str]:
    """machine_line of each distinct machine and ceilings among the records."""
    lines: list[str] = []
    for r in records:
        line = machine_line(r.get("env") or {}, _case_ceilings(r))
        if line not in lines:
            lines.append(line)
    return lines


def header() -> str:
    cols = " ".join(f"{name:>{width}}" for name, width, _ in COLUMNS)
    return f"{CASE_HEADER:<{CASE_WIDTH}} {cols}"


def row(record: dict) -> str:
    cells = []
    for _, width, value in COLUMNS:
        try:
            text = value(record)
        except (KeyError, TypeError, ZeroDivisionError):
            text = "-"
        cells.append(f"{text:>{width}}")
    return f"{_case_label(record):<{CASE_WIDTH}} " + " ".join(cells)


def summary(records: list[dict]) -> list[str]:
    """Geometric-mean speedup per cell, mode and dtype (cases that ran rnnkernels' kernels
    and torch.nn without error), then the cases where torch.nn raised."""
    groups: dict[tuple, list[float]] = {}
    fallbacks = 0
    nn_errors = []
    for r in records:
        if r["nn"].get("error"):
            nn_errors.append(f"  {_case_label(r).strip()}: {r['nn']['error'].splitlines()[0][:120]}")
        elif _fallback_mark(r):
            fallbacks += 1
        elif r.get("speedup"):
            c = r["case"]
            groups.setdefault((c["cell"], c["mode"], c.get("dtype", "float32")), []).append(r["speedup"])
    lines = [f"({fallbacks} cases where our module ran torch's engine are left out of the means)"] if fallbacks else []
    for (cell, mode, dtype), values in sorted(groups.items()):
        geo = math.exp(sum(math.log(v) for v in values) / len(values))
        lines.append(f"{cell:<9} {mode:<9} {dtype:<17} geomean nn/ours {geo:.2f}x over {len(values)} cases "
                     f"(min {min(values):.2f}x, max {max(values):.2f}x)")
    if nn_errors:
        lines.append(f"torch.nn raised in {len(nn_errors)} cases (ours timed alone):")
        lines += nn_errors
    lines += peer_lines(records)
    return lines


def peer_lines(records: list[dict]) -> list[str]:
    """The deployment runtimes of `--peers`, per case: each one's time as nn/peer (higher is
    faster) beside ours, and the fastest."""
    lines = []
    for r in records:
        if not r.get("peers"):
            continue
        parts = [f"ours {r['speedup']:.2f}x" if r.get("speedup") else "ours -"]
        for name, peer in r["peers"].items():
            if peer.get("error"):
                parts.append(f"{name} ({peer['error'].splitlines()[0][:60]})")
            else:
                parts.append(f"{name} {peer['speedup_vs_nn']:.2f}x" if peer.get("speedup_vs_nn")
                             else f"{name} -")
        vs_other = r.get("speedup_vs_fastest_other")
        lines.append(f"peers {_case_label(r).strip()}: nn/x {', '.join(parts)}; "
                     f"fastest: {r.get('fastest')}"
                     + (f"; ours vs the fastest other {vs_other:.2f}x" if vs_other else ""))
    return lines


def print_table(records: list[dict], out: TextIO = sys.stdout, legend: bool = True) -> None:
    for line in machine_lines(records):
        print(line, file=out)
    print(header(), file=out)
    for r in records:
        print(row(r), file=out)
    for line in summary(records):
        print(line, file=out)
    if legend:
        print(LEGEND, file=out)
