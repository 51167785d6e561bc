"""Swap torch.nn.LSTM for rnnkernels.LSTM in a small sequence classifier and train it.

    python examples/drop_in_lstm.py
"""

import time

import torch
from torch import nn

import rnnkernels


class Classifier(nn.Module):
    def __init__(self, rnn_cls, vocab=100, embed=64, hidden=128, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_cls(embed, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens):
        out, (h_n, c_n) = self.rnn(self.embed(tokens))
        return self.head(h_n[-1])


def train(rnn_cls, steps=30, seed=0):
    torch.manual_seed(seed)
    model = Classifier(rnn_cls)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 100, (32, 50))
    labels = tokens[:, 0] % 4  # learnable: the class is a function of the first token
    start = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(tokens), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item(), time.perf_counter() - start


if __name__ == "__main__":
    for cls in (nn.LSTM, rnnkernels.LSTM):
        loss, seconds = train(cls)
        print(f"{cls.__module__}.{cls.__name__}: final loss {loss:.4f}, {seconds:.2f} s")
    # Same seed, same initialisation, same dropout masks: the losses agree to rounding.
