"""Writes rnnkernels/engine_table.py from benchmark results (Note [engine choice]).

    python -m rnnkernels.bench --preset portable --engine rnnkernels --out run.jsonl
    python -m rnnkernels.engine_seed run.jsonl [more.jsonl ...]

Each dense or packed CPU case measured with our kernels (engine "rnk") becomes one row:
its CPU class and model, cell, dtype, mode, shape and torch.nn/rnnkernels time ratio.
Rows of the table measured on other CPU classes, or on this class at other keys, are
kept; a key measured again is replaced (several runs of one key: the median ratio).
Seed from quiet runs only: the ratios of a loaded machine decide nothing well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

TABLE = Path(__file__).with_name("engine_table.py")
OUR_ENGINE = "rnnk"  # rnnkernels.bench's engine column for our kernels (workload.engine_from_op_names)
_KEY_FIELDS = ("cpu_class", "cell", "dtype", "mode", "T", "B", "I", "H", "packed")
_HEADER = '''"""Measured torch.nn/rnnkernels time ratios per CPU class: the seed of the engine choice's
table (Note [engine choice] in rnnkernels/backends.py). Written by
`python -m rnnkernels.engine_seed RESULTS.jsonl ...` from runs of
`python -m rnnkernels.bench --engine rnnkernels`; edit by re-running it, not by hand."""

'''


def _row_key(row: dict) -> tuple:
    return tuple(row[f] for f in _KEY_FIELDS)


def rows_from_records(records) -> tuple[list[dict], list[str]]:
    """Table rows from bench records, and why records were left out."""
    measured: dict[tuple, list[dict]] = {}
    skipped = []
    for record in records:
        case, env = record.get("case"), record.get("env") or {}
        ours, nn = record.get("ours") or {}, record.get("nn") or {}
        if not case or case.get("device") != "cpu" or not record.get("speedup"):
            continue
        label = record.get("key", "?")
        if case.get("layers", 1) != 1 or case.get("bidirectional") or case.get("proj"):
            skipped.append(f"{label}: only single-layer unidirectional cases seed the table")
            continue
        if ours.get("engine") not in (None, OUR_ENGINE):
            skipped.append(f"{label}: ours ran {ours.get('engine')}, not rnnkernels' kernels")
            continue
        cls = env.get("cpu_class")
        if cls is None:
            skipped.append(f"{label}: no cpu_class in the record's env")
            continue
        row = {"cpu_class": cls, "cpu_model": env.get("cpu_model", "?"), "cell": case["cell"],
               "dtype": case["dtype"], "mode": case["mode"], "T": case["T"], "B": case["B"],
               "I": case["I"], "H": case["H"], "packed": bool(case.get("packed")),
               "nn_over_ours": float(record["speedup"]),
               "source": f"{env.get('date', '?')[:10]} {env.get('git', {}).get('commit', '?')[:8]}"}
        measured.setdefault(_row_key(row), []).append(row)
    rows = []
    for group in measured.values():
        row = dict(group[-1])
        row["nn_over_ours"] = round(statistics.median(r["nn_over_ours"] for r in group), 3)
        rows.append(row)
    return rows, skipped


def merge(existing: list[dict], new: list[dict]) -> list[dict]:
    table = {_row_key(r): r for r in existing}
    table.update({_row_key(r): r for r in new})
    return sorted(table.values(), key=lambda r: tuple(str(v) for v in _row_key(r)))


def write_table(rows: list[dict], path: Path = TABLE) -> None:
    lines = "".join(f"    {row!r},\n" for row in rows)
    path.write_text(_HEADER + "# fmt: off\nROWS = [\n" + lines + "]\n")


def _read_records(paths):
    for path in paths:
        if path.endswith(".json"):
            continue  # row files: _read_rows
        for line in Path(path).read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnkernels.engine_seed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON-lines files of python -m rnnkernels.bench "
                   "(.jsonl), or row files (.json: a list of rows, each with its source)")
    p.add_argument("--table", default=str(TABLE), help="the table file to update")
    args = p.parse_args(argv)
    from .engine_table import ROWS

    table = Path(args.table)
    existing = ROWS if table == TABLE else _load_rows(table)
    new, skipped = rows_from_records(_read_records(args.results))
    new += _read_rows(args.results)
    for reason in skipped:
        print(f"left out: {reason}", file=sys.stderr)
    write_table(merge(existing, new), table)
    routed = sum(r["nn_over_ours"] < 1.0 for r in new)
    print(f"{len(new)} rows from {len(args.results)} file(s) ({routed} route to torch); "
          f"{table} now holds {len(merge(existing, new))} rows")
    return 0


def _read_rows(paths) -> list[dict]:
    """Rows given as such (.json: a list of rows with their source), for figures that
    were not measured by a bench run on this machine (another machine's report)."""
    rows = []
    for path in paths:
        if path.endswith(".json"):
            rows += json.loads(Path(path).read_text())
    return rows


def _load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    scope: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)  # noqa: S102 (our own file)
    return scope.get("ROWS", [])


if __name__ == "__main__":
    sys.exit(main())
