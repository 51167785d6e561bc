"""Degenerate but valid inputs (issue 17, point 1): a seeded random comparison with
torch.nn (tests/degenerate.py), and the mismatches it found."""

import random

import pytest
import torch

import rnnkernels
from degenerate import CELLS, F64, compare, random_cell_case, random_layer_case

@pytest.mark.parametrize("seed", range(12))
def test_random_degenerate_layers_behave_as_torch_nn(seed):
    rng = random.Random(1000 + seed)
    outcomes = [compare(*random_layer_case(rng)) for _ in range(25)]
    assert outcomes.count("accepted") + outcomes.count("refused") == 25


@pytest.mark.parametrize("seed", range(6))
def test_random_degenerate_cells_behave_as_torch_nn(seed):
    rng = random.Random(2000 + seed)
    outcomes = [compare(*random_cell_case(rng)) for _ in range(25)]
    assert outcomes.count("accepted") + outcomes.count("refused") == 25


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("unbatched", [False, True])
def test_cells_of_hidden_size_zero_run_as_torch_nn(kind, unbatched):
    """Found by the random comparison: torch.nn's cells accept hidden_size 0 (outputs
    [B, 0]); ours raised in the op's weight check."""
    for hx in (False, True):
        def make_args():
            gen = torch.Generator().manual_seed(3)
            x = torch.randn(*(() if unbatched else (2,)), 3, dtype=F64, generator=gen)
            if not hx:
                return (x.requires_grad_(),)
            h = torch.zeros(*(() if unbatched else (2,)), 0, dtype=F64)
            return (x.requires_grad_(), (h, h.clone()) if kind == "LSTMCell" else h)
        assert compare(lambda: getattr(torch.nn, kind)(3, 0, dtype=F64),
                        lambda: getattr(rnnkernels, kind)(3, 0, dtype=F64), make_args,
                        f"{kind} H=0") == "accepted"


def test_the_generator_reaches_both_outcomes_and_every_form():
    """The random cases are not all refused (or all accepted): the comparison above
    compares values and gradients for many of them."""
    rng = random.Random(1000)
    labels, outcomes = [], []
    for _ in range(150):
        case = random_layer_case(rng)
        labels.append(case[3])
        outcomes.append(compare(*case))
    assert outcomes.count("accepted") > 40 and outcomes.count("refused") > 10
    for marker in ("packed", "unbatched", "dense", "hx=none", "hx=list", "hx=wrong_rank",
                   "I=0", "H=0", "T=0", "B=0"):
        assert any(marker in label for label in labels), marker
