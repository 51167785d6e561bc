"""rnnkernels' modules as drop-in replacements of torch.nn's.

Everything a user can reach is compared with torch.nn on the same weights: constructor
(positional and keyword), repr, parameter names, state_dict both ways, forward signature,
output types, shapes and strides (dense, batch_first, unbatched, PackedSequence), .to(),
deepcopy, pickle, torch.save, weight changes between calls, weight_norm and
parametrizations, torch.func.functional_call, the private attributes other code relies on,
and dropout in train and eval mode. Numbers are compared in float64.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import rnnkernels

I, H, P, L, B, T = 5, 7, 4, 2, 3, 6   # input, hidden, proj, layers, batch, steps
F64 = torch.float64
LAYERS = ("RNN", "GRU", "LSTM")
CELLS = ("RNNCell", "GRUCell", "LSTMCell")

# One configuration per option the layer modules have, each switched away from its default.
LAYER_CONFIGS = [
    ("RNN", dict()),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    ("RNN", dict(bias=False, batch_first=True)),
    ("GRU", dict()),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(bias=False)),
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=P, num_layers=2, batch_first=True)),
    ("LSTM", dict(proj_size=P, bias=False, bidirectional=True)),
]
CELL_CONFIGS = [("RNNCell", dict()), ("RNNCell", dict(nonlinearity="relu", bias=False)),
                ("GRUCell", dict()), ("GRUCell", dict(bias=False)),
                ("LSTMCell", dict()), ("LSTMCell", dict(bias=False))]


def config_id(value):
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "default"
    return str(value)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Shapes here are tiny: worker threads only add wake-up latency on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair(kind: str, options: dict, dtype=F64):
    """(ours, torch.nn's) with the same weights."""
    ours = getattr(rnnkernels, kind)(I, H, dtype=dtype, **options)
    reference = getattr(nn, kind)(I, H, dtype=dtype, **options)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def rand(*shape, dtype=F64, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)


def states(module, batch=B, unbatched=False, requires_grad=False):
    """Random h_0 (and c_0) for a module; None-free so gradients reach them."""
    if isinstance(module, nn.RNNCellBase):
        shape = (module.hidden_size,) if unbatched else (batch, module.hidden_size)
        if isinstance(module, nn.LSTMCell):
            return (rand(*shape, requires_grad=requires_grad),
                    rand(*shape, requires_grad=requires_grad))
        return rand(*shape, requires_grad=requires_grad)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    lead = (layers,) if unbatched else (layers, batch)
    out = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    h0 = rand(*lead, out, requires_grad=requires_grad)
    if isinstance(module, nn.LSTM):
        return h0, rand(*lead, module.hidden_size, requires_grad=requires_grad)
    return h0


def dense_input(module, requires_grad=False):
    if isinstance(module, nn.RNNCellBase):
        return rand(B, I, requires_grad=requires_grad)
    shape = (B, T, I) if module.batch_first else (T, B, I)
    return rand(*shape, requires_grad=requires_grad)


def flatten(out):
    """Tensors of a forward result, in order (PackedSequence fields included)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if out is None:
        return []
    return [t for part in out for t in flatten(part)]


def assert_same_outputs(ours, theirs):
    """Same structure and types, equal values, same shapes and strides."""
    assert type(ours) is type(theirs)
    if isinstance(theirs, (tuple, list)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same_outputs(a, b)
        return
    if theirs is None:
        assert ours is None
        return
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.stride() == theirs.stride(), (ours.stride(), theirs.stride())
    torch.testing.assert_close(ours, theirs)


def backward_both(ours_out, theirs_out, seed=1):
    """Backpropagates the same random cotangent through both results."""
    generator = torch.Generator().manual_seed(seed)
    ours_tensors = [t for t in flatten(ours_out) if t.is_floating_point()]
    theirs_tensors = [t for t in flatten(theirs_out) if t.is_floating_point()]
    loss_ours = loss_theirs = 0
    for a, b in zip(ours_tensors, theirs_tensors):
        weight = torch.randn(b.shape, dtype=b.dtype, generator=generator)
        loss_ours = loss_ours + (a * weight).sum()
        loss_theirs = loss_theirs + (b * weight).sum()
    loss_ours.backward()
    loss_theirs.backward()


def assert_same_grads(ours, theirs):
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    theirs_grads = {n: p.grad for n, p in theirs.named_parameters()}
    assert ours_grads.keys() == theirs_grads.keys()
    for name in theirs_grads:
        assert theirs_grads[name] is not None and ours_grads[name] is not None, name
        torch.testing.assert_close(ours_grads[name], theirs_grads[name], msg=name)


# ---------------------------------------------------------------- construction


POSITIONAL = {
    # RNN's 4th positional argument is nonlinearity (torch.nn's quirk), the rest follow.
    # device and dtype cannot follow bidirectional positionally for RNN and GRU: the 9th
    # positional slot of RNNBase is proj_size (test_rnn_gru_positional_device_quirk).
    "RNN": (I, H, 2, "relu", False, True, 0.25, True),
    "GRU": (I, H, 2, False, True, 0.25, True),
    "LSTM": (I, H, 2, False, True, 0.25, True, P, "cpu", F64),
    "RNNCell": (I, H, False, "relu", "cpu", F64),
    "GRUCell": (I, H, False, "cpu", F64),
    "LSTMCell": (I, H, False, "cpu", F64),
}
KEYWORD = {
    "RNN": dict(input_size=I, hidden_size=H, num_layers=2, nonlinearity="relu", bias=False,
                batch_first=True, dropout=0.25, bidirectional=True, device="cpu", dtype=F64),
    "GRU": dict(input_size=I, hidden_size=H, num_layers=2, bias=False, batch_first=True,
                dropout=0.25, bidirectional=True, device="cpu", dtype=F64),
    "LSTM": dict(input_size=I, hidden_size=H, num_layers=2, bias=False, batch_first=True,
                 dropout=0.25, bidirectional=True, proj_size=P, device="cpu", dtype=F64),
    "RNNCell": dict(input_size=I, hidden_size=H, bias=False, nonlinearity="relu",
                    device="cpu", dtype=F64),
    "GRUCell": dict(input_size=I, hidden_size=H, bias=False, device="cpu", dtype=F64),
    "LSTMCell": dict(input_size=I, hidden_size=H, bias=False, device="cpu", dtype=F64),
}
ATTRIBUTES = ("mode", "input_size", "hidden_size", "num_layers", "nonlinearity", "bias",
              "batch_first", "dropout", "bidirectional", "proj_size", "training")


@pytest.mark.parametrize("kind", LAYERS + CELLS)
@pytest.mark.parametrize("style", ["positional", "keyword", "defaults"])
def test_constructor_like_torch_nn(kind, style):
    if style == "positional":
        args, kwargs = POSITIONAL[kind], {}
    elif style == "keyword":
        args, kwargs = (), KEYWORD[kind]
    else:
        args, kwargs = (I, H), {}
    torch.manual_seed(0)
    ours = getattr(rnnkernels, kind)(*args, **kwargs)
    torch.manual_seed(0)
    theirs = getattr(nn, kind)(*args, **kwargs)

    assert isinstance(ours, getattr(nn, kind))
    assert repr(ours) == repr(theirs)
    for attribute in ATTRIBUTES:
        assert getattr(ours, attribute, None) == getattr(theirs, attribute, None), attribute
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert list(ours_params) == list(theirs_params)
    for name, p in theirs_params.items():
        q = ours_params[name]
        assert (q.shape, q.dtype, q.device) == (p.shape, p.dtype, p.device), name
        assert torch.equal(q, p), f"{name}: initialisation differs from torch.nn's"
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]


def test_rnn_nonlinearity_is_the_fourth_positional_argument():
    ours, theirs = rnnkernels.RNN(I, H, 1, "relu"), nn.RNN(I, H, 1, "relu")
    assert ours.nonlinearity == theirs.nonlinearity == "relu"
    assert ours.mode == theirs.mode == "RNN_RELU"
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x), theirs(x))
    # With a 4th positional argument the bias moves to the 5th: both read it the same way.
    assert rnnkernels.RNN(I, H, 1, "tanh", False).bias is nn.RNN(I, H, 1, "tanh", False).bias


@pytest.mark.parametrize("kind", ["RNN", "GRU"])
def test_rnn_gru_positional_device_quirk(kind):
    # torch.nn documents (..., bidirectional, device, dtype) but reads the 9th positional
    # argument as proj_size; ours must fail the same way, not quietly accept it.
    args = POSITIONAL[kind] + ("cpu", F64)
    with pytest.raises(Exception) as theirs:
        getattr(nn, kind)(*args)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(rnnkernels, kind)(*args)
    assert str(ours.value).startswith(str(theirs.value))
    assert "proj_size='cpu'" in str(ours.value)   # ours names where the argument went


@pytest.mark.parametrize("kind", LAYERS + CELLS)
def test_isinstance_of_torch_nn_module(kind):
    module = getattr(rnnkernels, kind)(I, H)
    assert isinstance(module, getattr(nn, kind))
    base = nn.RNNCellBase if kind.endswith("Cell") else nn.RNNBase
    assert isinstance(module, base)


# ---------------------------------------------------------------- state_dict and outputs


@pytest.mark.parametrize("kind,options", LAYER_CONFIGS + CELL_CONFIGS, ids=config_id)
@pytest.mark.parametrize("direction", ["ours_to_nn", "nn_to_ours"])
def test_state_dict_loads_both_ways(kind, options, direction):
    ours = getattr(rnnkernels, kind)(I, H, dtype=F64, **options)
    theirs = getattr(nn, kind)(I, H, dtype=F64, **options)
    source, target = (ours, theirs) if direction == "ours_to_nn" else (theirs, ours)
    result = target.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (name, p), (other, q) in zip(source.state_dict().items(), target.state_dict().items()):
        assert name == other and torch.equal(p, q)

    x = dense_input(ours, requires_grad=True)
    hx = states(ours, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    hx_ref = tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple) \
        else hx.detach().clone().requires_grad_()
    ours_out, theirs_out = ours(x, hx), theirs(x_ref, hx_ref)
    assert_same_outputs(ours_out, theirs_out)
    backward_both(ours_out, theirs_out)
    assert_same_grads(ours, theirs)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for a, b in zip(flatten(hx), flatten(hx_ref)):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("kind,options", LAYER_CONFIGS, ids=config_id)
def test_forward_signature_and_outputs(kind, options):
    ours, theirs = pair(kind, options)
    x = dense_input(ours)
    # hx omitted, None, positional, keyword.
    assert_same_outputs(ours(x), theirs(x))
    assert_same_outputs(ours(x, None), theirs(x, None))
    hx = states(ours)
    assert_same_outputs(ours(x, hx), theirs(x, hx))
    assert_same_outputs(ours(x, hx=hx), theirs(input=x, hx=hx))
    assert_same_outputs(ours(input=x), theirs(x))
    # Unbatched 2-D input, with and without a 2-D state (batch_first does not apply).
    x1 = rand(T, I)
    assert_same_outputs(ours(x1), theirs(x1))
    hx1 = states(ours, unbatched=True)
    assert_same_outputs(ours(x1, hx1), theirs(x1, hx1))
    # A non-contiguous input.
    wide = rand(*x.shape[:-1], 2 * I)[..., ::2]
    assert not wide.is_contiguous()
    assert_same_outputs(ours(wide), theirs(wide))
    if kind == "LSTM":
        output, hidden = ours(x)
        assert isinstance(hidden, tuple) and len(hidden) == 2


@pytest.mark.parametrize("kind,options", LAYER_CONFIGS, ids=config_id)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_in_and_out(kind, options, enforce_sorted):
    ours, theirs = pair(kind, options)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    sequences = [rand(n, I) for n in lengths]
    packed = pack_sequence(sequences, enforce_sorted=enforce_sorted)
    hx = states(ours, batch=len(lengths))
    for args in ((packed,), (packed, hx)):
        ours_out, theirs_out = ours(*args), theirs(*args)
        assert type(ours_out[0]) is PackedSequence
        ours_data, ours_sizes, ours_sorted, ours_unsorted = ours_out[0]
        theirs_data, theirs_sizes, theirs_sorted, theirs_unsorted = theirs_out[0]
        assert torch.equal(ours_sizes, theirs_sizes) and ours_sizes.dtype == theirs_sizes.dtype
        if enforce_sorted:
            assert ours_sorted is None and theirs_sorted is None
            assert ours_unsorted is None and theirs_unsorted is None
        else:
            assert torch.equal(ours_sorted, theirs_sorted)
            assert torch.equal(ours_unsorted, theirs_unsorted)
        assert_same_outputs(ours_data, theirs_data)
        assert_same_outputs(ours_out[1], theirs_out[1])

    # Gradients through a packed input with a state, against torch.nn.
    data = packed.data.clone().requires_grad_()
    data_ref = packed.data.clone().requires_grad_()
    ours_out = ours(PackedSequence(data, *packed[1:]), hx)
    theirs_out = theirs(PackedSequence(data_ref, *packed[1:]), hx)
    backward_both((ours_out[0].data, ours_out[1]), (theirs_out[0].data, theirs_out[1]))
    assert_same_grads(ours, theirs)
    torch.testing.assert_close(data.grad, data_ref.grad)


def test_packed_padded_round_trip_matches_torch_nn():
    ours, theirs = pair("LSTM", dict(batch_first=True, bidirectional=True))
    padded = rand(B, T, I)
    lengths = torch.tensor([T, 2, 5])
    packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
    ours_out, theirs_out = ours(packed), theirs(packed)
    unpacked_ours = nn.utils.rnn.pad_packed_sequence(ours_out[0], batch_first=True)
    unpacked_theirs = nn.utils.rnn.pad_packed_sequence(theirs_out[0], batch_first=True)
    assert_same_outputs(unpacked_ours, unpacked_theirs)
    assert_same_outputs(ours_out[1], theirs_out[1])


@pytest.mark.parametrize("kind,options", CELL_CONFIGS, ids=config_id)
def test_cell_forward_signature_and_outputs(kind, options):
    ours, theirs = pair(kind, options)
    x = dense_input(ours)
    assert_same_outputs(ours(x), theirs(x))
    hx = states(ours)
    assert_same_outputs(ours(x, hx), theirs(x, hx))
    assert_same_outputs(ours(x, hx=hx), theirs(input=x, hx=hx))
    x1, hx1 = rand(I), states(ours, unbatched=True)
    assert_same_outputs(ours(x1), theirs(x1))
    assert_same_outputs(ours(x1, hx1), theirs(x1, hx1))


# ---------------------------------------------------------------- conversion and serialisation


@pytest.mark.parametrize("kind", LAYERS + CELLS)
def test_to_dtype_and_double(kind):
    options = dict(num_layers=2) if kind in LAYERS else {}
    ours = getattr(rnnkernels, kind)(I, H, **options)
    theirs = getattr(nn, kind)(I, H, **options)
    theirs.load_state_dict(ours.state_dict())
    for convert in (lambda m: m.to(F64), lambda m: m.double(), lambda m: m.to("cpu", F64)):
        ours, theirs = convert(ours), convert(theirs)
        assert all(p.dtype == F64 for p in ours.parameters())
        if kind in LAYERS:
            # _flat_weights must follow the converted parameters (torch.nn's _apply does it).
            names = ours._flat_weights_names
            assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, names))
        x = dense_input(ours)
        assert_same_outputs(ours(x), theirs(x))
    ours, theirs = ours.float(), theirs.float()
    x = dense_input(ours).float()
    # float32 with float64 weights gone: within float32 tolerances of torch.nn.
    for a, b in zip(flatten(ours(x)), flatten(theirs(x))):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def _assert_same_module(copied, original):
    assert type(copied) is type(original)
    for (name, p), (other, q) in zip(copied.named_parameters(), original.named_parameters()):
        assert name == other and torch.equal(p, q)
    x = dense_input(original)
    assert_same_outputs(copied(x), original(x))


@pytest.mark.parametrize("kind,options", [LAYER_CONFIGS[1], LAYER_CONFIGS[8], CELL_CONFIGS[4]],
                         ids=config_id)
def test_deepcopy_pickle_and_torch_save(kind, options):
    ours = getattr(rnnkernels, kind)(I, H, dtype=F64, **options)
    ours(dense_input(ours))   # a forward first, so any state it leaves is copied too

    copied = copy.deepcopy(ours)
    _assert_same_module(copied, ours)
    with torch.no_grad():
        next(copied.parameters()).add_(1.0)
    assert not torch.equal(next(copied.parameters()), next(ours.parameters())), \
        "deepcopy shares parameters with the original"
    if kind in LAYERS:
        assert all(w is getattr(copied, n)
                   for w, n in zip(copied._flat_weights, copied._flat_weights_names))

    _assert_same_module(pickle.loads(pickle.dumps(ours)), ours)

    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    _assert_same_module(torch.load(buffer, weights_only=False), ours)

    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    for target in (getattr(rnnkernels, kind)(I, H, dtype=F64, **options),
                   getattr(nn, kind)(I, H, dtype=F64, **options)):
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer, weights_only=True))
        x = dense_input(ours)
        assert_same_outputs(target(x), ours(x))


# ---------------------------------------------------------------- weights changed between calls


def _recurrent_weight_name(module):
    return "weight_hh" if isinstance(module, nn.RNNCellBase) else "weight_hh_l0"


def _change_weights(module, how, new_value, grad_seed=2):
    name = _recurrent_weight_name(module)
    if how == "no_grad_copy":
        with torch.no_grad():
            getattr(module, name).copy_(new_value)
    elif how == "data_copy":
        # .data writes do not bump the version counter: a cache keyed on it would go stale.
        version = getattr(module, name)._version
        getattr(module, name).data.copy_(new_value)
        assert getattr(module, name)._version == version
    elif how == "new_parameter":
        setattr(module, name, nn.Parameter(new_value.clone()))
    elif how == "optimizer_step":
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        generator = torch.Generator().manual_seed(grad_seed)
        x = torch.randn(dense_input(module).shape, dtype=F64, generator=generator)
        out = flatten(module(x))
        sum(o.sum() for o in out).backward()
        optimizer.step()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM", "LSTMCell"])
@pytest.mark.parametrize("how", ["no_grad_copy", "data_copy", "new_parameter", "optimizer_step"])
def test_weight_changes_between_calls_are_picked_up(kind, how):
    options = dict(num_layers=2) if kind in LAYERS else {}
    ours, theirs = pair(kind, options)
    x, hx = dense_input(ours), states(ours)   # a non-zero state, so weight_hh matters at once
    before = ours(x, hx)
    assert_same_outputs(before, theirs(x, hx))

    name = _recurrent_weight_name(ours)
    new_value = 2 * torch.rand_like(getattr(ours, name)) - 1
    _change_weights(ours, how, new_value)
    _change_weights(theirs, how, new_value)
    for (n, p), (m, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        # After an optimizer step the weights differ by the rounding of the two gradients.
        assert n == m
        torch.testing.assert_close(p, q, rtol=0, atol=0 if how != "optimizer_step" else 1e-12)

    after = ours(x, hx)
    assert not torch.equal(flatten(after)[0], flatten(before)[0]), "the change had no effect"
    assert_same_outputs(after, theirs(x, hx))
    if kind in LAYERS:
        assert all(w is getattr(ours, n)
                   for w, n in zip(ours._flat_weights, ours._flat_weights_names))


# ---------------------------------------------------------------- weight_norm, parametrizations


def _forward_backward_both(ours, theirs, x=None, hx=None):
    x = dense_input(ours) if x is None else x
    args = (x,) if hx is None else (x, hx)
    ours_out, theirs_out = ours(*args), theirs(*args)
    assert_same_outputs(ours_out, theirs_out)
    backward_both(ours_out, theirs_out)
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_old_weight_norm(kind):
    ours, theirs = pair(kind, dict(num_layers=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # deprecated in favour of parametrizations
        for module in (ours, theirs):
            nn.utils.weight_norm(module, "weight_hh_l0")
    assert "weight_hh_l0_g" in dict(ours.named_parameters())
    _forward_backward_both(ours, theirs)
    # The reparametrisation is live: changing g changes the output, the same way.
    for module in (ours, theirs):
        with torch.no_grad():
            module.weight_hh_l0_g.mul_(1.5)
    _forward_backward_both(ours, theirs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_parametrizations_weight_norm(kind):
    ours, theirs = pair(kind, dict(bidirectional=True))
    for module in (ours, theirs):
        nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")
    assert "parametrizations.weight_hh_l0.original0" in dict(ours.named_parameters())
    _forward_backward_both(ours, theirs)
    for module in (ours, theirs):
        with torch.no_grad():
            module.parametrizations.weight_hh_l0.original0.mul_(0.5)
    _forward_backward_both(ours, theirs)
    # state_dict of a parametrised module loads into torch.nn's parametrised module.
    fresh = getattr(nn, kind)(I, H, dtype=F64, bidirectional=True)
    nn.utils.parametrizations.weight_norm(fresh, "weight_hh_l0")
    fresh.load_state_dict(ours.state_dict())
    x = dense_input(ours)
    assert_same_outputs(ours(x), fresh(x))


class _Symmetric(nn.Module):
    def forward(self, weight):
        # weight_hh of an RNN is square [H, H]; for gated cells use the top square block.
        square = weight[: weight.shape[1]]
        symmetric = square.triu() + square.triu(1).transpose(0, 1)
        return torch.cat([symmetric, weight[weight.shape[1]:]], 0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "GRUCell"])
def test_register_parametrization(kind):
    options = dict(num_layers=2) if kind in LAYERS else {}
    ours, theirs = pair(kind, options)
    name = _recurrent_weight_name(ours)
    for module in (ours, theirs):
        parametrize.register_parametrization(module, name, _Symmetric())
    weight = getattr(ours, name)
    torch.testing.assert_close(weight[: weight.shape[1]], weight[: weight.shape[1]].T)
    _forward_backward_both(ours, theirs)
    with parametrize.cached():
        x = dense_input(ours)
        assert_same_outputs(ours(x), theirs(x))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell"])
def test_functional_call_with_replaced_weights(kind):
    options = dict(num_layers=2, bidirectional=True) if kind in LAYERS else {}
    ours, theirs = pair(kind, options)
    replaced = {name: (2 * torch.rand_like(p) - 1).requires_grad_()
                for name, p in ours.named_parameters()}
    replaced_ref = {name: p.detach().clone().requires_grad_() for name, p in replaced.items()}
    x = dense_input(ours)
    ours_out = torch.func.functional_call(ours, replaced, (x,))
    theirs_out = torch.func.functional_call(theirs, replaced_ref, (x,))
    assert_same_outputs(ours_out, theirs_out)
    # The module's own weights give another answer, and are used again after the call.
    assert not torch.equal(flatten(ours(x))[0], flatten(ours_out)[0])
    assert_same_outputs(ours(x), theirs(x))
    backward_both(ours_out, theirs_out)
    for name in replaced:
        torch.testing.assert_close(replaced[name].grad, replaced_ref[name].grad, msg=name)
    assert all(p.grad is None for p in ours.parameters()), "gradients reached the module's own"


# ---------------------------------------------------------------- private attributes


@pytest.mark.parametrize("kind,options", LAYER_CONFIGS, ids=config_id)
def test_private_attributes_other_code_relies_on(kind, options):
    ours, theirs = pair(kind, options)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))
    assert [[tuple(w.shape) for w in layer] for layer in ours.all_weights] == \
        [[tuple(w.shape) for w in layer] for layer in theirs.all_weights]
    assert all(w is getattr(ours, n)
               for layer, names in zip(ours.all_weights, ours._all_weights)
               for w, n in zip(layer, names))
    assert ours.flatten_parameters() is None
    x = dense_input(ours)
    assert_same_outputs(ours(x), theirs(x))


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_between_layers_in_training_only(kind, bidirectional):
    options = dict(num_layers=3, dropout=0.5, bidirectional=bidirectional)
    ours, theirs = pair(kind, options)
    x = dense_input(ours)
    directions = 2 if bidirectional else 1

    ours.eval(), theirs.eval()
    evaluated = ours(x)
    assert_same_outputs(evaluated, theirs(x))
    assert_same_outputs(ours(x), evaluated)           # eval: deterministic, no dropout

    ours.train(), theirs.train()
    torch.manual_seed(123)
    trained = ours(x)
    torch.manual_seed(123)
    trained_theirs = theirs(x)
    # Layer 0's final state comes before any dropout; later layers see dropped inputs.
    h_eval, h_train = flatten(evaluated)[1], flatten(trained)[1]
    torch.testing.assert_close(h_train[:directions], h_eval[:directions])
    assert not torch.allclose(flatten(trained)[0], flatten(evaluated)[0])
    # torch.nn and ours draw the same dropout masks from the same seed (float64 CPU).
    assert_same_outputs(trained, trained_theirs)

    # Gradients through the dropout masks agree too.
    torch.manual_seed(7)
    ours_out = ours(x)
    torch.manual_seed(7)
    theirs_out = theirs(x)
    backward_both(ours_out, theirs_out)
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("kind", LAYERS)
def test_dropout_with_one_layer_does_nothing(kind):
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        ours = getattr(rnnkernels, kind)(I, H, dropout=0.5, dtype=F64)
    theirs = getattr(nn, kind)(I, H, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    x = dense_input(ours)
    assert ours.training
    assert_same_outputs(ours(x), theirs(x))


# ---------------------------------------------------------------- strided weights and states


@pytest.mark.parametrize("kind", LAYERS + CELLS)
def test_non_contiguous_weights_states_and_input(kind):
    # Weights assigned as strided views, an expanded (stride 0) state and input: torch.nn
    # accepts all of them, ours must read them through their strides, not their storage.
    ours, theirs = pair(kind, dict(num_layers=2) if kind in LAYERS else {})
    name = _recurrent_weight_name(ours)
    rows = getattr(ours, name).shape[0]
    strided = rand(getattr(ours, name).shape[1], 2 * rows)[:, ::2].t()
    bias_name = "bias_hh" if kind in CELLS else "bias_hh_l1"
    strided_bias = rand(2 * getattr(ours, bias_name).shape[0])[::2]
    for module in (ours, theirs):
        setattr(module, name, nn.Parameter(strided))
        setattr(module, bias_name, nn.Parameter(strided_bias))
    assert not getattr(ours, name).is_contiguous()

    hx = states(ours, batch=1)
    hx = tuple(h.expand(*h.shape[:-2], B, h.shape[-1]) for h in hx) if isinstance(hx, tuple) \
        else hx.expand(*hx.shape[:-2], B, hx.shape[-1])
    x = dense_input(ours)
    x = x[..., :1].expand(x.shape)            # stride 0 along the features
    _forward_backward_both(ours, theirs, x, hx)
