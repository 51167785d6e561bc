"""Sequence to sequence: date-format translation with a bidirectional encoder and a
greedy decoder, with and without (Bahdanau) attention.

    python examples/seq2seq.py              # about 4 minutes on 2 CPU cores
    python examples/seq2seq.py --smoke

Input: a date written one of several ways ("24 November 2026", "Nov 24, 2026",
"24/11/2026", "tuesday 24 nov 26" ...); output: its ISO form "2026-11-24". The answer is
exact, so exact-match accuracy on held-out dates is the score. The encoder is a
bidirectional rnnkernels RNN/LSTM/GRU over the characters; the decoder is the matching
rnnkernels cell stepped in Python (teacher forcing in training, greedy decoding in
evaluation). With attention (Bahdanau, Cho & Bengio, 2015) each decoder step reads a
learned mixture of all encoder states; without, it sees only the encoder's final state.
Writes results.{jsonl,md} and the accuracy curves (PNG).
"""

from __future__ import annotations

import argparse
import datetime
import random

import torch
from torch import nn

from _common import (
    Progress, add_common_arguments, make_rnn, parameter_count, pyplot, save_figure, write_results)

import rnnkernels

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
PAD, BOS, EOS = 0, 1, 2
CHARS = sorted(set("".join(MONTHS) + "".join(DAYS) + "0123456789 ,/-."))
STOI = {c: i + 3 for i, c in enumerate(CHARS)}
ITOS = {i: c for c, i in STOI.items()}
VOCAB = len(CHARS) + 3
OUT_LEN = 10  # yyyy-mm-dd


def written(d: datetime.date, rng: random.Random) -> str:
    m, day = MONTHS[d.month - 1], DAYS[d.weekday()]
    forms = [f"{d.day} {m} {d.year}", f"{m[:3]} {d.day}, {d.year}", f"{d.day:02d}/{d.month:02d}/{d.year}",
             f"{day} {d.day} {m[:3]} {d.year % 100:02d}", f"{m} {d.day} {d.year}",
             f"{d.day}.{d.month}.{d.year}", f"{day}, {m} {d.day}, {d.year}"]
    return rng.choice(forms)


def dates(n: int, seed: int, exclude=frozenset()):
    rng = random.Random(seed)
    start = datetime.date(1950, 1, 1).toordinal()
    out = []
    while len(out) < n:
        d = datetime.date.fromordinal(start + rng.randrange(36500))
        if d in exclude:
            continue
        out.append((written(d, rng), d.isoformat(), d))
    return out


def encode(texts: list[str], length: int | None = None) -> torch.Tensor:
    length = length or max(len(t) for t in texts)
    x = torch.full((len(texts), length), PAD)
    for i, t in enumerate(texts):
        x[i, :len(t)] = torch.tensor([STOI[c] for c in t])
    return x


class Seq2Seq(nn.Module):
    def __init__(self, cell: str, hidden: int, attention: bool, embed: int = 32):
        super().__init__()
        self.cell_kind, self.attention = cell, attention
        self.embed = nn.Embedding(VOCAB, embed, padding_idx=PAD)
        self.encoder = make_rnn(cell, embed, hidden, batch_first=True, bidirectional=True)
        dec_hidden = 2 * hidden
        cell_cls = {"rnn": rnnkernels.RNNCell, "lstm": rnnkernels.LSTMCell, "gru": rnnkernels.GRUCell}[cell]
        self.decoder = cell_cls(embed + (2 * hidden if attention else 0), dec_hidden)
        self.bridge = nn.Linear(2 * hidden, dec_hidden)
        if attention:  # Bahdanau: score(s, e) = v . tanh(W_s s + W_e e)
            self.att_state = nn.Linear(dec_hidden, hidden, bias=False)
            self.att_enc = nn.Linear(2 * hidden, hidden)
            self.att_v = nn.Linear(hidden, 1, bias=False)
        self.out = nn.Linear(dec_hidden + (2 * hidden if attention else 0), VOCAB)

    def encode(self, x):
        lengths = (x != PAD).sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(x), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        enc, hidden = self.encoder(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True, total_length=x.shape[1])
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # [2, B, H]
        summary = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], -1)))
        state = (summary, torch.zeros_like(summary)) if self.cell_kind == "lstm" else summary
        return enc, x != PAD, state

    def step(self, token, state, enc, mask):
        emb = self.embed(token)
        h = state[0] if isinstance(state, tuple) else state
        context = None
        if self.attention:
            scores = self.att_v(torch.tanh(self.att_state(h)[:, None] + self.att_enc(enc))).squeeze(-1)
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
            context = (weights[:, :, None] * enc).sum(1)
            emb = torch.cat([emb, context], -1)
        state = self.decoder(emb, state)
        h = state[0] if isinstance(state, tuple) else state
        logits = self.out(torch.cat([h, context], -1) if self.attention else h)
        return logits, state

    def forward(self, x, y):  # teacher forcing: y [B, OUT_LEN]
        enc, mask, state = self.encode(x)
        token = torch.full((x.shape[0],), BOS, device=x.device)
        logits = []
        for t in range(y.shape[1]):
            step_logits, state = self.step(token, state, enc, mask)
            logits.append(step_logits)
            token = y[:, t]
        return torch.stack(logits, 1)

    @torch.no_grad()
    def greedy(self, x):
        enc, mask, state = self.encode(x)
        token = torch.full((x.shape[0],), BOS, device=x.device)
        out = []
        for _ in range(OUT_LEN):
            logits, state = self.step(token, state, enc, mask)
            token = logits.argmax(-1)
            out.append(token)
        return torch.stack(out, 1)


def exact_match(model, data, device) -> float:
    model.eval()
    x = encode([d[0] for d in data]).to(device)
    y = encode([d[1] for d in data]).to(device)
    correct = (model.greedy(x) == y).all(1).float().mean().item()
    model.train()
    return correct


def run(cell, attention, args, train_data, test_data, progress):
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = Seq2Seq(cell, args.hidden, attention).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = random.Random(args.seed)
    curve = []
    for step in range(1, args.steps + 1):
        batch = rng.sample(train_data, args.batch)
        x = encode([b[0] for b in batch]).to(device)
        y = encode([b[1] for b in batch]).to(device)
        loss = nn.functional.cross_entropy(model(x, y).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, exact_match(model, test_data[:500], device)))
        progress.update(1, f"{cell} {'attention' if attention else 'plain'} loss {loss.item():.3f}")
    example = test_data[:5]
    guesses = model.eval().greedy(encode([e[0] for e in example]).to(device)).cpu()
    samples = [(e[0], "".join(ITOS.get(int(t), "?") for t in g), e[1])
               for e, g in zip(example, guesses)]
    return {"cell": cell, "attention": attention, "accuracy": exact_match(model, test_data, device),
            "curve": curve, "parameters": parameter_count(model), "samples": samples,
            "steps": args.steps, "batch": args.batch, "hidden": args.hidden}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "examples/results/seq2seq")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch, args.hidden, args.eval_every = 4, 8, 8, 2
    train_data = dates(20000 if not args.smoke else 200, args.seed)
    seen = frozenset(d[2] for d in train_data)
    test_data = dates(2000 if not args.smoke else 50, args.seed + 1, exclude=seen)
    jobs = [(cell, att) for cell in args.cell for att in (False, True)]
    progress = Progress(len(jobs) * args.steps, "seq2seq")
    records = [run(cell, att, args, train_data, test_data, progress) for cell, att in jobs]

    md = [f"Exact-match accuracy of greedy decoding on {len(test_data)} held-out dates "
          f"(hidden {args.hidden} per encoder direction, {args.steps} Adam steps of batch "
          f"{args.batch}):\n", "| cell | without attention | with attention | parameters (without / with) |",
          "| --- | --- | --- | --- |"]
    for cell in args.cell:
        plain = next(r for r in records if r["cell"] == cell and not r["attention"])
        att = next(r for r in records if r["cell"] == cell and r["attention"])
        md.append(f"| {cell.upper()} | {plain['accuracy']:.3f} | {att['accuracy']:.3f} | "
                  f"{plain['parameters']} / {att['parameters']} |")
    md += ["", "Samples (input -> greedy output, target), last model:", ""]
    md += [f"- `{s[0]}` -> `{s[1]}` ({s[2]})" for s in records[-1]["samples"]]
    write_results(args.out, "results", records, "\n".join(md) + "\n")

    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        colours = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
        for r in records:
            steps, acc = zip(*r["curve"])
            ax.plot(steps, acc, color=colours[r["cell"]], ls="-" if r["attention"] else "--",
                    label=f"{r['cell'].upper()} {'attention' if r['attention'] else 'no attention'}")
        ax.set_xlabel("training step")
        ax.set_ylabel("exact match (500 held-out dates)")
        ax.legend(fontsize=7)
        save_figure(fig, f"{args.out}/accuracy.png")


if __name__ == "__main__":
    main()
