"""Character-level language model on a text that ships with Python (pydoc_data.topics).

    python examples/char_lm.py            # about 5 minutes on 2 CPU cores
    python examples/char_lm.py --smoke

The text is the help topics of Python's own documentation (about 465k characters); the
first 90% trains, the last 10% validates. Each cell (RNN, LSTM, GRU from rnnkernels, same
hidden size and step budget) is trained with truncated BPTT on random windows, then
evaluated in validation bits per character (cross-entropy in base 2, state carried along
64 parallel streams of the validation text), and samples text from a prompt.
Writes results.{jsonl,md} and the validation curves (PNG).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import rnnkernels

from _common import (
    Progress, add_common_arguments, make_rnn, parameter_count, pyplot, save_figure, write_results)


def load_text() -> str:
    import pydoc_data.topics

    return "".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


class CharModel(nn.Module):
    def __init__(self, cell, vocab, hidden, layers, embed=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = make_rnn(cell, embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def validation_bpc(model, data: torch.Tensor, device, streams=64, window=100) -> float:
    was_training = model.training
    model.eval()
    n = data.numel() // streams
    grid = data[: n * streams].view(streams, n).to(device)
    state, total, count = None, 0.0, 0
    for start in range(0, n - 1, window):
        x = grid[:, start:min(start + window, n - 1)]
        y = grid[:, start + 1:start + 1 + x.shape[1]]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count / math.log(2)


@torch.no_grad()
def sample(model, stoi, itos, prompt: str, length: int, temperature: float, device, seed: int) -> str:
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([[stoi[c] for c in prompt if c in stoi]], device=device)
    logits, state = model(x)
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, -1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        out.append(itos[int(nxt)])
        logits, state = model(nxt.view(1, 1), state)
    model.train()
    return prompt + "".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "examples/results/char_lm")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--window", type=int, default=100, help="truncated BPTT length")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    args = parser.parse_args()
    text = load_text()
    if args.smoke:
        text = text[:20000]
        args.hidden, args.steps, args.batch, args.window, args.eval_every = 16, 4, 4, 20, 2
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    itos = dict(enumerate(chars))
    data = torch.tensor([stoi[c] for c in text])
    split = int(0.9 * data.numel())
    train, val = data[:split], data[split:]
    device = torch.device(args.device)
    progress = Progress(len(args.cell) * args.steps, "char-lm")
    records = []
    for cell in args.cell:
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        model = CharModel(cell, len(chars), args.hidden, args.layers).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        curve = []
        for step in range(1, args.steps + 1):
            starts = torch.randint(0, train.numel() - args.window - 1, (args.batch,), generator=generator)
            idx = starts[:, None] + torch.arange(args.window + 1)
            chunk = train[idx].to(device)
            logits, _ = model(chunk[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if step % args.eval_every == 0 or step == args.steps:
                curve.append((step, validation_bpc(model, val, device)))
            progress.update(1, f"{cell} train bpc {loss.item() / math.log(2):.3f}")
        # int8 inference of the trained model (rnnkernels.quantize_dynamic: the recurrent
        # layer in int8; the embedding and the head stay float32), on the CPU.
        int8_model = rnnkernels.quantize_dynamic(model.to("cpu").eval())
        int8_bpc = validation_bpc(int8_model, val, torch.device("cpu"))
        model.to(device).train()
        records.append({"cell": cell, "val_bpc": curve[-1][1], "curve": curve,
                        "val_bpc_int8": int8_bpc,
                        "int8_change": int8_bpc / curve[-1][1] - 1,
                        "parameters": parameter_count(model.rnn),
                        "sample": sample(model, stoi, itos, "The ", 300 if not args.smoke else 20,
                                         0.8, device, args.seed),
                        "hidden": args.hidden, "layers": args.layers, "steps": args.steps,
                        "batch": args.batch, "window": args.window})
    unigram = torch.bincount(val, minlength=len(chars)).float()
    p = unigram / unigram.sum()
    unigram_bpc = float(-(p[p > 0] * p[p > 0].log2()).sum())
    md = [f"Validation bits per character on the last 10% of pydoc_data.topics ({val.numel()} "
          f"characters, {len(chars)} symbols; a unigram model scores {unigram_bpc:.3f}); "
          f"hidden {args.hidden}, {args.layers} layer(s), {args.steps} Adam steps of "
          f"{args.batch} windows of {args.window} characters:\n",
          "| cell | validation bits/char | int8 (rnnkernels.quantize_dynamic) | recurrent parameters |",
          "| --- | --- | --- | --- |"]
    md += [f"| {r['cell'].upper()} | {r['val_bpc']:.3f} | {r['val_bpc_int8']:.3f} "
           f"({100 * r['int8_change']:+.2f}%) | {r['parameters']} |" for r in records]
    md += ["", "Samples (temperature 0.8, prompt \"The \"):", ""]
    for r in records:
        md += [f"{r['cell'].upper()}:", "", "```", r["sample"], "```", ""]
    write_results(args.out, "results", records, "\n".join(md) + "\n")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in records:
            steps, bpc = zip(*r["curve"])
            ax.plot(steps, bpc, marker="o", label=r["cell"].upper())
        ax.axhline(unigram_bpc, color="grey", ls="--", label="unigram")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation bits per character")
        ax.legend()
        save_figure(fig, f"{args.out}/validation_bpc.png")


if __name__ == "__main__":
    main()
