"""Shared by the examples: device choice, a dependency-free progress bar, results files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

CELLS = ("rnn", "lstm", "gru")


def add_common_arguments(parser, default_out: str) -> None:
    parser.add_argument("--cell", nargs="+", choices=CELLS, default=list(CELLS),
                        help="recurrent cells to run (default: all three)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=default_out, help="folder for results and plots")
    parser.add_argument("--smoke", action="store_true",
                        help="a run of seconds with tiny sizes (CI runs this)")


def make_rnn(cell: str, input_size: int, hidden: int, **kwargs):
    import rnnkernels

    return {"rnn": rnnkernels.RNN, "lstm": rnnkernels.LSTM, "gru": rnnkernels.GRU}[cell](
        input_size, hidden, **kwargs)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Progress:
    """A one-line progress bar on stderr: done/total, elapsed, ETA and a status text."""

    def __init__(self, total: int, label: str = ""):
        self.total, self.label, self.done = max(1, total), label, 0
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, n: int = 1, status: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if not self.tty and self.done < self.total and now - self._last < 10:
            return  # in logs, a line every 10 s
        self._last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done)
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        line = (f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s "
                f"eta {eta:4.0f}s {status}")
        sys.stderr.write(("\r" + line[:150]) if self.tty else line + "\n")
        if self.done >= self.total and self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def write_results(out_dir: str, name: str, records: list[dict], markdown: str) -> None:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"{name}.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (path / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {path / (name + '.jsonl')} and {path / (name + '.md')}")


def pyplot():
    """matplotlib.pyplot with a file backend, or None (plots are then skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install matplotlib)")
        return None



def save_figure(fig, path: str) -> None:
    """Lays out, writes (110 dpi) and closes a figure made through pyplot(), and says where
    it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
