"""Pictures from any results file (.jsonl or .csv):

  <stem>-heatmap.png   the speedup (nn/ours, or ours/LB) over B x H, one panel per group of
                       cases that differ only in B, H (and I when I = H)
  <stem>-time-vs-T.png ours and torch.nn time per pass against T (log-log), one panel per
                       group that differs only in T

matplotlib is an optional dependency, imported here only (pip install matplotlib).
"""

from __future__ import annotations

import math
from pathlib import Path

from .output import read_results

MISSING_MATPLOTLIB = ("`python -m rnnkernels.bench plot` draws with matplotlib, which is not "
                      "installed (it is optional and used only here): pip install matplotlib")

METRICS = {
    "speedup": ("nn / ours (speedup)", lambda r: r.get("speedup")),
    "ours_over_lb": ("ours / lower bound", lambda r: r.get("ours_over_lb")),
    "nn_over_lb": ("torch.nn / lower bound", lambda r: r.get("nn_over_lb")),
}


def _import_pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit(MISSING_MATPLOTLIB) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _group_label(case: dict, skip: tuple) -> str:
    parts = [case["cell"], case["mode"]]
    for name in ("T", "B", "I", "H"):
        if name not in skip:
            parts.append(f"{name}={case[name]}")
    if case.get("layers", 1) > 1:
        parts.append(f"L{case['layers']}")
    if case.get("bidirectional"):
        parts.append("bi")
    if case.get("proj"):
        parts.append(f"proj{case['proj']}")
    if case.get("packed"):
        parts.append("packed")
    parts += [case.get("dtype", "float32"), case.get("device", "cpu"), f"{case.get('threads')} thr"]
    return " ".join(str(p) for p in parts)


def _group(records: list[dict], vary: tuple) -> dict[tuple, list[dict]]:
    """Records grouped by every case field except those in vary (I rides with H when I = H)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        case = r["case"]
        fixed = []
        for name in sorted(case):
            if name in vary or (name == "I" and "H" in vary and case["I"] == case["H"]):
                continue
            fixed.append((name, case[name]))
        groups.setdefault(tuple(fixed), []).append(r)
    return groups


def heatmap_groups(records: list[dict]) -> list[tuple[str, list[int], list[int], dict]]:
    """(title, Bs, Hs, {(B, H): record}) for each group spanning at least 2 cells of B x H."""
    out = []
    for _, members in _group(records, ("B", "H")).items():
        cells = {(r["case"]["B"], r["case"]["H"]): r for r in members}
        if len(cells) < 2:
            continue
        bs = sorted({b for b, _ in cells})
        hs = sorted({h for _, h in cells})
        out.append((_group_label(members[0]["case"], ("B", "H", "I")), bs, hs, cells))
    return out


def time_groups(records: list[dict]) -> list[tuple[str, list[dict]]]:
    out = []
    for _, members in _group(records, ("T",)).items():
        by_t = {r["case"]["T"]: r for r in members}
        if len(by_t) >= 2:
            out.append((_group_label(members[0]["case"], ("T",)), [by_t[t] for t in sorted(by_t)]))
    return out


def _panels(plt, count: int, width: float = 5.0, height: float = 4.0):
    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return fig, list(axes.flat)


def plot_heatmaps(records: list[dict], path: Path, metric: str = "speedup") -> bool:
    groups = heatmap_groups(records)
    if not groups:
        return False
    plt = _import_pyplot()
    label, value_of = METRICS[metric]
    fig, axes = _panels(plt, len(groups))
    for ax, (title, bs, hs, cells) in zip(axes, groups):
        grid = [[value_of(cells[(b, h)]) if (b, h) in cells else None for h in hs] for b in bs]
        values = [[math.nan if v is None else v for v in line] for line in grid]
        finite = [v for line in values for v in line if not math.isnan(v)]
        # log colour scale centred on 1: blue where the ratio is above 1, red below
        spread = max(abs(math.log2(v)) for v in finite if v > 0) if finite else 1.0
        spread = max(spread, 0.1)
        image = ax.imshow([[math.log2(v) if v and not math.isnan(v) and v > 0 else math.nan for v in line]
                           for line in values], cmap="RdBu", vmin=-spread, vmax=spread, origin="lower",
                          aspect="auto")
        ax.set_xticks(range(len(hs)), [str(h) for h in hs])
        ax.set_yticks(range(len(bs)), [str(b) for b in bs])
        ax.set_xlabel("H")
        ax.set_ylabel("B")
        ax.set_title(title, fontsize=8)
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                if not math.isnan(v):
                    dark = v > 0 and abs(math.log2(v)) > 0.6 * spread
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
        bar = fig.colorbar(image, ax=ax)
        bar.set_label(f"log2 {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_time_vs_t(records: list[dict], path: Path) -> bool:
    groups = time_groups(records)
    if not groups:
        return False
    plt = _import_pyplot()
    fig, axes = _panels(plt, len(groups))
    for ax, (title, members) in zip(axes, groups):
        ts = [r["case"]["T"] for r in members]
        ax.plot(ts, [r["ours"]["median_s"] * 1e3 for r in members], "o-", label="rnnkernels")
        nn_points = [(r["case"]["T"], r["nn"]["median_s"] * 1e3) for r in members if r["nn"]["median_s"]]
        if nn_points:  # torch.nn may have raised (its median is then null)
            ax.plot(*zip(*nn_points), "s--", label="torch.nn")
        if all(r.get("lb") for r in members):
            ax.plot(ts, [r["lb"]["median_s"] * 1e3 for r in members], ":", label="GEMM lower bound")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("ms per pass")
        ax.set_title(title, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(results: str, out_dir: str | None = None, metric: str = "speedup") -> list[Path]:
    """Draws what the file's cases allow; returns the written paths."""
    _import_pyplot()  # a clear message up front when matplotlib is missing
    source = Path(results)
    records = read_results(source)
    directory = Path(out_dir) if out_dir else source.parent
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    heatmap = directory / f"{source.stem}-heatmap.png"
    if plot_heatmaps(records, heatmap, metric):
        written.append(heatmap)
    timeplot = directory / f"{source.stem}-time-vs-T.png"
    if plot_time_vs_t(records, timeplot):
        written.append(timeplot)
    if not written:
        print(f"{source}: no group of cases varies over B x H or over T; nothing to draw "
              "(run a grid such as --B 1 8 32 --H 128 256 or --T 50 100 200)")
    for path in written:
        print(f"wrote {path}")
    return written
