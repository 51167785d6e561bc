"""Compares two results files case by case and flags regressions beyond noise.

    python -m rnnkernels.bench compare old.jsonl new.jsonl [--metric time|speedup]

Cases are matched by key. For each, x = log(new/old) of the metric:
  time      our median time (same machine, two commits)
  speedup   our time relative to torch.nn's in the same run, i.e. log(speedup_old /
            speedup_new): what changed in our code once the machine's own change, which
            hits torch.nn alike, is divided out (two machines, or a drifting machine)
The default, auto, is time when both files come from the same machine and speedup
otherwise.

Noise (sigma of x), the largest of:
  - per case, from repeated runs: when a file holds a key more than once (runs appended
    to one file), the standard deviation of log(median) over those runs; else the
    standard error of the median from the run's own samples,
    1.2533 * 1.4826 * MAD(log samples) / sqrt(n); old and new combined in quadrature
    (and for speedup, ours and torch.nn's);
  - across cases, torch.nn as a control: torch.nn's code is the same in both files, so
    the spread of log(nn_new / nn_old) over the cases (1.4826 * MAD) is what the
    measurement itself varies by (needs 3 cases or more).
A case is flagged REGRESSION when x > max(z * sigma, log(1 + min_change)) and faster when
x < -that (defaults z = 3, min_change = 3%).
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from typing import TextIO

from .output import read_results

MAD_TO_SIGMA = 1.4826
MEDIAN_SE_FACTOR = 1.2533  # standard error of a median / of a mean, normal data


@dataclass
class Side:
    """One variant ('ours' or 'nn') of one case in one file: its run medians and noise."""

    medians: list[float]
    sigma: float  # of log(median)

    @property
    def median(self) -> float:
        return statistics.median(self.medians)


def log_median_sigma(samples: list[float]) -> float:
    """Standard error of log(median) from one run's samples (0 with fewer than 2)."""
    samples = [s for s in samples if s and s > 0]
    if len(samples) < 2:
        return 0.0
    logs = [math.log(s) for s in samples]
    centre = statistics.median(logs)
    mad = statistics.median(abs(v - centre) for v in logs)
    return MEDIAN_SE_FACTOR * MAD_TO_SIGMA * mad / math.sqrt(len(samples))


def side(records: list[dict], variant: str) -> Side | None:
    entries = [r[variant] for r in records if r.get(variant) and r[variant].get("median_s")]
    if not entries:
        return None
    medians = [e["median_s"] for e in entries]
    if len(medians) >= 2:  # repeated runs: their spread is the noise
        sigma = statistics.stdev(math.log(m) for m in medians) / math.sqrt(len(medians))
        sigma = max(sigma, max(log_median_sigma(e.get("samples_s", [])) for e in entries))
    else:
        sigma = log_median_sigma(entries[0].get("samples_s", []))
    return Side(medians, sigma)


def group_by_key(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["key"], []).append(r)
    return groups


def machine_of(records: list[dict]) -> str | None:
    """The GPU's name, or the CPU identity (the model name alone in older files)."""
    for r in records:
        env = r.get("env") or {}
        name = (env.get("gpu_name") if r.get("case", {}).get("device") == "cuda"
                else env.get("cpu_identity") or env.get("cpu_model"))
        if name:
            return name
    return None


@dataclass
class Row:
    key: str
    old_ours: float
    new_ours: float
    old_nn: float | None
    new_nn: float | None
    x: float  # log(new/old) of the metric; > 0 means we got slower
    sigma: float
    threshold: float
    verdict: str  # "REGRESSION", "faster" or ""


def compare_records(old: list[dict], new: list[dict], metric: str = "auto", z: float = 3.0,
                    min_change: float = 0.03) -> dict:
    """The comparison as data: rows, the metric used, the control noise, unmatched keys."""
    if metric == "auto":
        same = machine_of(old) is not None and machine_of(old) == machine_of(new)
        metric = "time" if same else "speedup"
    if metric not in ("time", "speedup"):
        raise ValueError(f"metric must be 'time', 'speedup' or 'auto', got {metric!r}")
    old_g, new_g = group_by_key(old), group_by_key(new)
    keys = [k for k in old_g if k in new_g]
    sides = {}
    for k in keys:
        sides[k] = {name: (side(old_g[k], name), side(new_g[k], name)) for name in ("ours", "nn")}
    nn_logs = [math.log(s["nn"][1].median / s["nn"][0].median) for s in sides.values()
               if s["nn"][0] and s["nn"][1]]
    control_sigma = control_drift = None
    if len(nn_logs) >= 3:
        control_drift = statistics.median(nn_logs)
        control_sigma = MAD_TO_SIGMA * statistics.median(abs(v - control_drift) for v in nn_logs)
    floor = math.log1p(min_change)
    rows = []
    for k in keys:
        (o_old, o_new), (n_old, n_new) = sides[k]["ours"], sides[k]["nn"]
        if o_old is None or o_new is None:
            continue
        x = math.log(o_new.median / o_old.median)
        sigma = math.hypot(o_old.sigma, o_new.sigma)
        if metric == "speedup":
            if n_old is None or n_new is None:
                continue
            x -= math.log(n_new.median / n_old.median)
            sigma = math.hypot(sigma, n_old.sigma, n_new.sigma)
        if control_sigma is not None:
            sigma = max(sigma, control_sigma)
        threshold = max(z * sigma, floor)
        verdict = "REGRESSION" if x > threshold else "faster" if x < -threshold else ""
        rows.append(Row(k, o_old.median, o_new.median, n_old.median if n_old else None,
                        n_new.median if n_new else None, x, sigma, threshold, verdict))
    return {
        "metric": metric,
        "rows": rows,
        "control_sigma": control_sigma,
        "control_drift": control_drift,
        "only_old": [k for k in old_g if k not in new_g],
        "only_new": [k for k in new_g if k not in old_g],
        "machines": (machine_of(old), machine_of(new)),
    }


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.4g}"


def print_comparison(result: dict, out: TextIO = sys.stdout) -> None:
    machines = result["machines"]
    print(f"metric: {result['metric']}  (old machine: {machines[0]}; new machine: {machines[1]})", file=out)
    if result["control_sigma"] is not None:
        print(f"torch.nn control: drift {100 * math.expm1(result['control_drift']):+.1f}%, "
              f"noise sigma {100 * result['control_sigma']:.1f}% (across cases)", file=out)
    width = max([len(r.key) for r in result["rows"]] + [4])
    print(f"{'case':<{width}} {'old ms':>8} {'new ms':>8} {'new/old':>7} {'nn n/o':>7} "
          f"{'change':>7} {'thresh':>6}  verdict", file=out)
    for r in result["rows"]:
        nn_ratio = f"{r.new_nn / r.old_nn:.3f}" if r.old_nn and r.new_nn else "-"
        print(f"{r.key:<{width}} {_ms(r.old_ours):>8} {_ms(r.new_ours):>8} {r.new_ours / r.old_ours:>7.3f} "
              f"{nn_ratio:>7} {100 * math.expm1(r.x):>+6.1f}% {100 * math.expm1(r.threshold):>5.1f}%  "
              f"{r.verdict}", file=out)
    regressions = sum(r.verdict == "REGRESSION" for r in result["rows"])
    faster = sum(r.verdict == "faster" for r in result["rows"])
    print(f"{len(result['rows'])} cases compared: {regressions} regressions, {faster} faster, "
          f"{len(result['rows']) - regressions - faster} within noise; "
          f"{len(result['only_old'])} only in old, {len(result['only_new'])} only in new", file=out)


def main(old_path: str, new_path: str, metric: str = "auto", z: float = 3.0, min_change: float = 0.03,
         fail_on_regression: bool = False, out: TextIO = sys.stdout) -> int:
    result = compare_records(read_results(old_path), read_results(new_path), metric, z, min_change)
    print_comparison(result, out)
    if fail_on_regression and any(r.verdict == "REGRESSION" for r in result["rows"]):
        return 1
    return 0
