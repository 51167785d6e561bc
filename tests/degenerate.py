"""Random degenerate cases compared with torch.nn, shared by tests/test_degenerate_inputs.py
(seeded random.Random) and the fuzz target tests/fuzz/fuzz_modules.py (the same generators
driven by the fuzzer's bytes): sizes 0 and 1 in every dimension, hand-built PackedSequences
(forms pack_padded_sequence never produces), and every hx form. Per case, "accepted or
refused" first (and the exception type when refused), then outputs and every gradient
against the same torch.nn module in float64."""

import random
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence

import rnnkernels

F64 = torch.float64
LAYERS = ("LSTM", "GRU", "RNN")
CELLS = ("LSTMCell", "GRUCell", "RNNCell")


def outcome(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return True, fn()
    except Exception as error:  # noqa: BLE001 (the comparison is the point)
        return False, error


def _tensors(value):
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return [value] if isinstance(value, torch.Tensor) else []


def _leaves(value):
    return [t for t in _tensors(value) if t.requires_grad]


def compare(make_nn, make_ours, make_args, label, ours_refuses=None):
    """make_args() gives fresh (leaf) arguments; the modules share a state_dict.
    ours_refuses: an input torch.nn mishandles (a wrong answer or a crash, so it is not
    run): ours must raise this exception type."""
    if ours_refuses is not None:
        ran, result = outcome(lambda: make_ours()(*make_args()))
        assert not ran and isinstance(result, ours_refuses), f"{label}: ours {result!r}"
        return "refused"
    built_nn, nn_module = outcome(make_nn)
    built_ours, our_module = outcome(make_ours)
    assert built_nn == built_ours, f"{label}: constructor: torch.nn {nn_module!r}, ours {our_module!r}"
    if not built_nn:
        assert isinstance(our_module, type(nn_module)), (label, nn_module, our_module)
        return "refused"
    our_module.load_state_dict(nn_module.state_dict())
    nn_args, our_args = make_args(), make_args()
    ran_nn, nn_result = outcome(lambda: nn_module(*nn_args))
    ran_ours, our_result = outcome(lambda: our_module(*our_args))
    assert ran_nn == ran_ours, f"{label}: torch.nn {'ran' if ran_nn else repr(nn_result)}, ours " \
                               f"{'ran' if ran_ours else repr(our_result)}"
    if not ran_nn:
        assert isinstance(our_result, type(nn_result)), (label, nn_result, our_result)
        return "refused"
    want, got = _tensors(nn_result), _tensors(our_result)
    assert [t.shape for t in want] == [t.shape for t in got], label
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, msg=label)
    nn_leaves = _leaves(nn_args) + list(nn_module.parameters())
    our_leaves = _leaves(our_args) + list(our_module.parameters())
    if not any(t.numel() for t in want) or not any(t.requires_grad for t in want):
        return "accepted"
    weights = [torch.randn(t.shape, dtype=F64) for t in want]
    grads_nn = torch.autograd.grad(sum((t * w).sum() for t, w in zip(want, weights)), nn_leaves,
                                   allow_unused=True)
    grads_ours = torch.autograd.grad(sum((t * w).sum() for t, w in zip(got, weights)), our_leaves,
                                     allow_unused=True)
    for w, g in zip(grads_nn, grads_ours):
        if w is None or g is None:
            assert (w is None or not w.any()) and (g is None or not g.any()), label
        else:
            torch.testing.assert_close(g, w, msg=label)
    return "accepted"


def random_layer_case(rng: random.Random):
    kind = rng.choice(LAYERS)
    size = lambda: rng.choice((0, 1, 1, 2, 3))  # noqa: E731
    I, H = size(), size()  # noqa: E741
    options = dict(num_layers=rng.choice((1, 2)), bidirectional=rng.random() < 0.5,
                   batch_first=rng.random() < 0.5, bias=rng.random() < 0.8)
    if kind == "LSTM" and rng.random() < 0.3:
        options["proj_size"] = rng.choice((0, 1, 2))
    if kind == "RNN":
        options["nonlinearity"] = rng.choice(("tanh", "relu"))
    directions = 2 if options["bidirectional"] else 1
    state_size = options.get("proj_size") or H
    form = rng.choice(("dense", "dense", "unbatched", "packed", "packed"))
    T, B = size(), size()
    hx_form = rng.choice(("none", "given", "given", "list", "wrong_rank"))
    torch_seed = rng.randrange(2**31)

    def make_args():
        gen = torch.Generator().manual_seed(torch_seed)
        rand = lambda *shape: torch.randn(*shape, dtype=F64, generator=gen)  # noqa: E731
        if form == "packed":
            # Hand-built: any non-increasing batch sizes, sorted_indices a random permutation
            # or None (pack_padded_sequence always gives both indices or neither).
            steps = max(T, 1)
            sizes = sorted((rng_local.randint(1, max(B, 1)) for _ in range(steps)), reverse=True)
            batch = sizes[0]
            data = rand(sum(sizes), I).requires_grad_()
            order = torch.randperm(batch, generator=gen) if with_indices else None
            unsort = torch.argsort(order) if order is not None else None
            x = PackedSequence(data, torch.tensor(sizes), order, unsort)
        elif form == "unbatched":
            batch = None
            x = rand(T, I).requires_grad_()
        else:
            batch = B
            x = (rand(B, T, I) if options["batch_first"] else rand(T, B, I)).requires_grad_()
        if hx_form == "none":
            return (x,)
        lead = (options["num_layers"] * directions,) + ((batch,) if batch is not None else ())
        h = rand(*lead, state_size).requires_grad_()
        if hx_form == "wrong_rank":
            h = h[0] if h.dim() > 1 else h.unsqueeze(0)
        hx = (h, rand(*lead, H).requires_grad_()) if kind == "LSTM" and hx_form != "wrong_rank" \
            else ((h, h) if kind == "LSTM" else h)
        if hx_form == "list" and kind == "LSTM":
            hx = list(hx)
        return (x, hx)

    rng_local = random.Random(torch_seed)
    with_indices = rng.random() < 0.6

    def make_args_fresh():
        rng_local.seed(torch_seed)
        return make_args()

    label = f"{kind}(I={I}, H={H}, {options}) {form} T={T} B={B} hx={hx_form}"
    return (lambda: getattr(torch.nn, kind)(I, H, dtype=F64, **options),
            lambda: getattr(rnnkernels, kind)(I, H, dtype=F64, **options), make_args_fresh, label)


def random_cell_case(rng: random.Random):
    kind = rng.choice(CELLS)
    I, H, B = (rng.choice((0, 1, 1, 2, 3)) for _ in range(3))  # noqa: E741
    options = dict(bias=rng.random() < 0.8)
    if kind == "RNNCell":
        options["nonlinearity"] = rng.choice(("tanh", "relu"))
    unbatched = rng.random() < 0.3
    hx_form = rng.choice(("none", "given", "given", "list", "wrong_rank"))
    torch_seed = rng.randrange(2**31)

    def make_args():
        gen = torch.Generator().manual_seed(torch_seed)
        rand = lambda *shape: torch.randn(*shape, dtype=F64, generator=gen)  # noqa: E731
        lead = () if unbatched else (B,)
        x = rand(*lead, I).requires_grad_()
        if hx_form == "none":
            return (x,)
        h = rand(*lead, H).requires_grad_()
        if hx_form == "wrong_rank":
            h = h.unsqueeze(0)
        if kind == "LSTMCell":
            hx = (h, rand(*h.shape).requires_grad_())
            return (x, list(hx) if hx_form == "list" else hx)
        return (x, h)

    label = f"{kind}(I={I}, H={H}, {options}) B={B} unbatched={unbatched} hx={hx_form}"
    # A 2-D state with 1-D input: torch.nn unsqueezes it to 3-D and its kernel returns a
    # wrong shape and values (RNNCell) or crashes (GRUCell: a segmentation fault); ours
    # raises. (A 3-D state with 2-D input torch.nn refuses itself: compared as usual.)
    refuses = (rnnkernels.nn.StateRankError if hx_form == "wrong_rank" and unbatched
               else None)
    return (lambda: getattr(torch.nn, kind)(I, H, dtype=F64, **options),
            lambda: getattr(rnnkernels, kind)(I, H, dtype=F64, **options), make_args, label,
            refuses)


