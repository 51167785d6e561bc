"""Long-term dependencies: the adding problem and the copy-memory task for RNN, LSTM, GRU.

    python examples/long_term_dependencies.py            # about 5 minutes on 2 CPU cores
    python examples/long_term_dependencies.py --smoke    # seconds

Adding problem (Hochreiter & Schmidhuber, 1997; as in Le, Jaitly & Hinton, 2015): each
step carries a number in [0, 1) and a marker; two steps are marked, one in each half of
the sequence, and the target is the sum of their numbers. Always answering 1 scores MSE
1/6 = 0.167 (the variance of the sum), the baseline to beat.

Copy memory (Arjovsky, Shah & Bengio, 2016): 10 symbols from an alphabet of 8, then T
blanks with a delimiter at the end, then the model must write the 10 symbols back. We
report accuracy on those 10 positions; guessing scores 1/8 = 12.5%.

Every cell gets the same budget (hidden size, steps, batch, optimizer, learning rate,
gradient clipping at 1.0) and several seeds; the results table gives the final test
score per sequence length (mean and spread over seeds), the parameter count, and how
many runs ended with a non-finite loss. Writes results.{jsonl,md} and loss-curve PNGs.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from torch import nn

from _common import (
    Progress, add_common_arguments, make_rnn, parameter_count, pyplot, save_figure, write_results)

ADDING_BASELINE_MSE = 1 / 6
COPY_SYMBOLS, COPY_LENGTH = 8, 10
BLANK, DELIMITER = COPY_SYMBOLS, COPY_SYMBOLS + 1


def adding_batch(batch: int, T: int, generator: torch.Generator):
    values = torch.rand(batch, T, generator=generator)
    first = torch.randint(0, T // 2, (batch,), generator=generator)
    second = torch.randint(T // 2, T, (batch,), generator=generator)
    markers = torch.zeros(batch, T)
    rows = torch.arange(batch)
    markers[rows, first] = 1
    markers[rows, second] = 1
    x = torch.stack([values, markers], -1)  # [B, T, 2]
    y = values[rows, first] + values[rows, second]
    return x, y


def copy_batch(batch: int, T: int, generator: torch.Generator):
    symbols = torch.randint(0, COPY_SYMBOLS, (batch, COPY_LENGTH), generator=generator)
    total = COPY_LENGTH + T + COPY_LENGTH
    tokens = torch.full((batch, total), BLANK)
    tokens[:, :COPY_LENGTH] = symbols
    tokens[:, COPY_LENGTH + T - 1] = DELIMITER
    targets = torch.full((batch, total), BLANK)
    targets[:, -COPY_LENGTH:] = symbols
    x = nn.functional.one_hot(tokens, COPY_SYMBOLS + 2).float()
    return x, targets


class Model(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden: int, outputs: int):
        super().__init__()
        self.rnn = make_rnn(cell, input_size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x):
        return self.head(self.rnn(x)[0])  # [B, T, outputs]


def run_one(task: str, cell: str, T: int, seed: int, args, progress: Progress) -> dict:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    device = torch.device(args.device)
    if task == "adding":
        model = Model(cell, 2, args.hidden, 1).to(device)
        make = adding_batch
    else:
        model = Model(cell, COPY_SYMBOLS + 2, args.hidden, COPY_SYMBOLS + 2).to(device)
        make = copy_batch
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def loss_of(x, y):
        out = model(x.to(device))
        if task == "adding":
            return nn.functional.mse_loss(out[:, -1, 0], y.to(device)), out
        return nn.functional.cross_entropy(out.flatten(0, 1), y.to(device).flatten()), out

    curve, diverged = [], False
    for step in range(args.steps):
        x, y = make(args.batch, T, generator)
        loss, _ = loss_of(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            progress.update(args.steps - step, f"{task} {cell} T={T}: diverged")
            break
        curve.append(value)
        progress.update(1, f"{task} {cell} T={T} seed {seed} loss {value:.4f}")

    with torch.no_grad():
        x, y = make(1000, T, torch.Generator().manual_seed(10_000 + seed))
        loss, out = loss_of(x, y)
        if task == "adding":
            score = loss.item()  # test MSE
        else:
            guess = out[:, -COPY_LENGTH:, :COPY_SYMBOLS].argmax(-1).cpu()  # a symbol, never blank
            score = (guess == y[:, -COPY_LENGTH:]).float().mean().item()  # recall accuracy
    return {"task": task, "cell": cell, "T": T, "seed": seed, "score": score,
            "diverged": diverged or not math.isfinite(score), "curve": curve,
            "parameters": parameter_count(model.rnn), "hidden": args.hidden,
            "steps": args.steps, "batch": args.batch, "lr": args.lr}


def summarise(records: list[dict]) -> str:
    lines = []
    for task, metric, baseline in (("adding", "test MSE (lower is better)",
                                    f"baseline (always 1): {ADDING_BASELINE_MSE:.3f}"),
                                   ("copy", "recall accuracy (higher is better)",
                                    f"baseline (guessing): {1 / COPY_SYMBOLS:.3f}")):
        rows = [r for r in records if r["task"] == task]
        if not rows:
            continue
        lengths = sorted({r["T"] for r in rows})
        cells = [c for c in ("rnn", "lstm", "gru") if any(r["cell"] == c for r in rows)]
        lines.append(f"### {task}: {metric}; {baseline}\n")
        lines.append("| cell | parameters | " + " | ".join(f"T={T}" for T in lengths)
                     + " | diverged runs |")
        lines.append("|" + " --- |" * (len(lengths) + 3))
        for cell in cells:
            mine = [r for r in rows if r["cell"] == cell]
            cols = []
            for T in lengths:
                scores = [r["score"] for r in mine if r["T"] == T and not r["diverged"]]
                if not scores:
                    cols.append("diverged")
                elif len(scores) == 1:
                    cols.append(f"{scores[0]:.3f}")
                else:
                    cols.append(f"{statistics.mean(scores):.3f} ± {statistics.stdev(scores):.3f}")
            diverged = sum(r["diverged"] for r in mine)
            lines.append(f"| {cell.upper()} | {mine[0]['parameters']} | " + " | ".join(cols)
                         + f" | {diverged}/{len(mine)} |")
        seeds = len({r["seed"] for r in rows})
        lines.append(f"\n(mean ± standard deviation over {seeds} seeds; hidden "
                     f"{rows[0]['hidden']}, {rows[0]['steps']} steps of batch {rows[0]['batch']}, "
                     f"Adam lr {rows[0]['lr']}, clipping 1.0)\n")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], out_dir: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        lengths = sorted({r["T"] for r in rows})
        fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.5), squeeze=False)
        for ax, T in zip(axes[0], lengths):
            for cell, colour in (("rnn", "tab:red"), ("lstm", "tab:blue"), ("gru", "tab:green")):
                for i, r in enumerate(x for x in rows if x["T"] == T and x["cell"] == cell):
                    ax.plot(r["curve"], color=colour, alpha=0.8, lw=1,
                            label=cell.upper() if i == 0 else None)
            if task == "adding":
                ax.axhline(ADDING_BASELINE_MSE, color="grey", ls="--", lw=1, label="baseline")
            ax.set_title(f"{task}, T={T}")
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        save_figure(fig, f"{out_dir}/{task}_loss.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "examples/results/long_term_dependencies")
    parser.add_argument("--tasks", nargs="+", choices=("adding", "copy"), default=["adding", "copy"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.seeds, args.steps, args.batch, args.hidden = [10], 1, 5, 8, 8
    torch.set_num_threads(torch.get_num_threads())
    jobs = [(task, cell, T, args.seed + s) for task in args.tasks for T in args.lengths
            for cell in args.cell for s in range(args.seeds)]
    progress = Progress(len(jobs) * args.steps, "long-term dependencies")
    records = [run_one(task, cell, T, seed, args, progress) for task, cell, T, seed in jobs]
    write_results(args.out, "results", records, summarise(records))
    plot(records, args.out)


if __name__ == "__main__":
    main()
