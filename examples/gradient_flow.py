"""Vanishing and exploding gradients: ||dL/dh_t|| against t (Pascanu, Mikolov & Bengio, 2013).

    python examples/gradient_flow.py            # about a minute on 2 CPU cores
    python examples/gradient_flow.py --smoke

The loss sits on the last step of an adding-problem sequence (examples/long_term_
dependencies.py), so dL/dh_t measures how much the state at step t can still influence
it: what BPTT can learn from. The states are stepped with rnnkernels' cells (RNNCell,
LSTMCell, GRUCell) so that every h_t is a tensor whose gradient can be read.

  1. The three cells at initialisation and after training (the sequence module trained
     on the adding problem, its weights then loaded into the cell).
  2. A tanh RNN whose W_hh is rescaled to spectral radius 0.5 ... 2: below 1 the gradient
     shrinks geometrically going back in time, above 1 it can grow.
  3. Training a tanh RNN initialised at radius 2 with plain SGD, with and without gradient
     clipping: the share of runs whose loss blows up.
Writes results.{jsonl,md} and gradient_flow.png.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from _common import (
    CELLS, Progress, add_common_arguments, make_rnn, pyplot, save_figure, write_results)
from long_term_dependencies import adding_batch

import rnnkernels

CELL_CLASSES = {"rnn": rnnkernels.RNNCell, "lstm": rnnkernels.LSTMCell, "gru": rnnkernels.GRUCell}


class Regressor(nn.Module):
    def __init__(self, cell, hidden):
        super().__init__()
        self.rnn = make_rnn(cell, 2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1, :]).squeeze(-1)


def gradient_norms(model: Regressor, cell: str, x, y) -> list[float]:
    """||dL/dh_t|| (mean over the batch) for t = 1..T, stepping the state with the cell."""
    layer = model.rnn
    step = CELL_CLASSES[cell](layer.input_size, layer.hidden_size).to(x.device)
    step.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    if cell == "rnn":
        step.nonlinearity = layer.nonlinearity
    B, H = x.shape[0], layer.hidden_size
    h = torch.zeros(B, H, device=x.device)
    c = torch.zeros(B, H, device=x.device)
    states = []
    for t in range(x.shape[1]):
        if cell == "lstm":
            h, c = step(x[:, t], (h, c))
        else:
            h = step(x[:, t], h)
        h.retain_grad()
        states.append(h)
    loss = nn.functional.mse_loss(model.head(h).squeeze(-1), y)
    loss.backward()
    return [s.grad.norm(dim=1).mean().item() for s in states]


def set_spectral_radius(rnn: nn.Module, radius: float) -> None:
    with torch.no_grad():
        w = rnn.weight_hh_l0
        w.mul_(radius / torch.linalg.eigvals(w).abs().max())


def decay_per_step(norms: list[float]) -> float:
    """Geometric factor per step going back in time, from a least-squares fit of log norms."""
    T = len(norms)
    ts = [t for t in range(T) if norms[t] > 0]
    if len(ts) < 2:
        return float("nan")
    logs = [math.log(norms[t]) for t in ts]
    mt, ml = sum(ts) / len(ts), sum(logs) / len(logs)
    slope = sum((t - mt) * (l - ml) for t, l in zip(ts, logs)) / sum((t - mt) ** 2 for t in ts)
    return math.exp(-slope)  # < 1: vanishing going back, > 1: exploding


def train(model, T, steps, batch, lr, clip, generator, device, progress=None, label="",
          sgd=False):
    optimizer = (torch.optim.SGD if sgd else torch.optim.Adam)(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x, y = adding_batch(batch, T, generator)
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
        if progress:
            progress.update(1, f"{label} loss {losses[-1]:.3g}")
        if not math.isfinite(losses[-1]):
            break
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "examples/results/gradient_flow")
    parser.add_argument("-T", type=int, default=100, help="sequence length")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--clip-runs", type=int, default=4, help="seeds per clipping setting")
    parser.add_argument("--clip-steps", type=int, default=200)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.5, 0.9, 1.1, 1.5, 2.0])
    args = parser.parse_args()
    if args.smoke:
        args.T, args.hidden, args.train_steps, args.clip_runs, args.clip_steps = 12, 8, 3, 1, 3
        args.radii = [0.9, 1.5]
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    x, y = adding_batch(64, args.T, torch.Generator().manual_seed(args.seed + 1))
    x, y = x.to(device), y.to(device)
    records = []
    total = len(args.cell) * args.train_steps + 2 * args.clip_runs * args.clip_steps
    progress = Progress(total, "gradient flow")

    # 1. cells at initialisation and after training
    for cell in args.cell:
        torch.manual_seed(args.seed)
        model = Regressor(cell, args.hidden).to(device)
        init = gradient_norms(model, cell, x, y)
        losses = train(model, args.T, args.train_steps, 64, 5e-3, 1.0, generator, device,
                       progress, f"train {cell}")
        trained = gradient_norms(model, cell, x, y)
        records.append({"part": "cells", "cell": cell, "init": init, "trained": trained,
                        "final_loss": losses[-1], "decay_init": decay_per_step(init),
                        "decay_trained": decay_per_step(trained)})

    # 2. spectral radius of W_hh (tanh RNN, at initialisation)
    for radius in args.radii:
        torch.manual_seed(args.seed)
        model = Regressor("rnn", args.hidden).to(device)
        set_spectral_radius(model.rnn, radius)
        norms = gradient_norms(model, "rnn", x, y)
        records.append({"part": "radius", "radius": radius, "norms": norms,
                        "decay": decay_per_step(norms)})

    # 3. clipping: tanh RNN at radius 2, plain SGD (Adam would rescale the steps itself)
    for clip in (None, 1.0):
        for run in range(args.clip_runs):
            torch.manual_seed(args.seed + run)
            model = Regressor("rnn", args.hidden).to(device)
            set_spectral_radius(model.rnn, 2.0)
            losses = train(model, args.T, args.clip_steps, 64, 0.05, clip,
                           torch.Generator().manual_seed(run), device, progress,
                           f"clip={clip} run {run}", sgd=True)
            progress.update(args.clip_steps - len(losses))
            blew_up = (not math.isfinite(losses[-1])) or max(losses) > 100 * losses[0]
            records.append({"part": "clipping", "clip": clip, "run": run, "losses": losses,
                            "blew_up": blew_up, "final_loss": losses[-1]})

    md = [f"### dL/dh_t, loss on the last of T={args.T} steps (adding problem, hidden {args.hidden})\n",
          "Decay per step going back in time (geometric fit of ‖dL/dh_t‖; below 1 vanishes):\n",
          "| cell | at initialisation | after training | ‖dL/dh_1‖ / ‖dL/dh_T‖ at init | after | final training MSE |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in (r for r in records if r["part"] == "cells"):
        md.append(f"| {r['cell'].upper()} | {r['decay_init']:.3f} | {r['decay_trained']:.3f} | "
                  f"{r['init'][0] / r['init'][-1]:.2e} | {r['trained'][0] / r['trained'][-1]:.2e} | "
                  f"{r['final_loss']:.4f} |")
    md += ["", "Tanh RNN with W_hh rescaled to a spectral radius, at initialisation:\n",
           "| spectral radius | decay per step | ‖dL/dh_1‖ / ‖dL/dh_T‖ |", "| --- | --- | --- |"]
    for r in (r for r in records if r["part"] == "radius"):
        md.append(f"| {r['radius']} | {r['decay']:.3f} | {r['norms'][0] / r['norms'][-1]:.2e} |")
    md += ["", f"Training a tanh RNN initialised at radius 2 (SGD lr 0.05, "
               f"{args.clip_steps} steps), runs whose loss blew up (non-finite or 100x the first):\n",
           "| gradient clipping | runs blown up | median final loss |", "| --- | --- | --- |"]
    for clip in (None, 1.0):
        runs = [r for r in records if r["part"] == "clipping" and r["clip"] == clip]
        finals = sorted(r["final_loss"] for r in runs)
        md.append(f"| {'none' if clip is None else f'norm {clip}'} | "
                  f"{sum(r['blew_up'] for r in runs)}/{len(runs)} | {finals[len(finals) // 2]:.3g} |")
    write_results(args.out, "results", records, "\n".join(md) + "\n")

    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
    for r in (r for r in records if r["part"] == "cells"):
        axes[0].plot(r["init"], color=colours[r["cell"]], ls="--", label=f"{r['cell'].upper()} init")
        axes[0].plot(r["trained"], color=colours[r["cell"]], label=f"{r['cell'].upper()} trained")
    axes[0].set_title("cells: ||dL/dh_t||")
    for r in (r for r in records if r["part"] == "radius"):
        axes[1].plot(r["norms"], label=f"radius {r['radius']}")
    axes[1].set_title("tanh RNN, spectral radius of W_hh")
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.legend(fontsize=7)
    for r in (r for r in records if r["part"] == "clipping"):
        axes[2].plot(r["losses"], color="tab:orange" if r["clip"] is None else "tab:purple",
                     alpha=0.7, label=("no clipping" if r["clip"] is None else "clipped")
                     if r["run"] == 0 else None)
    axes[2].set_yscale("log")
    axes[2].set_title("training at radius 2")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=7)
    save_figure(fig, f"{args.out}/gradient_flow.png")


if __name__ == "__main__":
    main()
