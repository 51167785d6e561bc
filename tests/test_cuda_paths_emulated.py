"""The modules on the CUDA backend of the op pair, run in CI without a GPU.

On a GPU the modules' rnn_layer calls reach the CUDA host (csrc/cuda/recurrence_cuda.cpp):
its input projection (one GEMM, float32 x_proj for 16-bit input), the recurrences and the
shared host layer's gradient plumbing (csrc/host/layer.cpp). Here those run on the CPU in
the CUDA backend's emulation (tests/cuda_emulation.py: the CUDA host code and kernels
compiled for the CPU), through the fixture `cuda_path`, which

  * makes the cell modules skip their CPU fast path (_fast_cell_weights);
  * routes functional.py's rnn_layer calls (layers and cells) to the emulated op pair
    through an autograd Function that mirrors csrc/autograd.cpp's RnnLayerFunction (the
    same saved tensors, the same backward op call, one gradient per weight);
  * counts the emulated calls, so that a test fails, instead of passing on the CPU
    backend, should functional.py stop routing these calls through the op pair.

Every result and every gradient (input, h0, c0, every parameter) is compared with float64
torch.nn: the three cells, layers, directions, projection, batch_first, no bias, dense,
packed (unsorted) and unbatched input, and the three *Cell modules; 16-bit inputs against
torch.nn's own error in that dtype; zoneout (beyond torch.nn) against rnnkernels.reference.
What this does not cover: the real CUDA dispatch (device checks, the CUDA kernels'
registration), cuBLAS and the GPU itself; tests/test_cuda.py checks those on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import cuda_emulation
import rnnkernels
from rnnkernels import functional as RF

T, B, I, H = 6, 4, 9, 7
LENGTHS = [6, 2, 4, 1]  # unsorted: PackedSequence with enforce_sorted=False


# ---------------------------------------------------------------- the mirrored autograd


def _emu():
    return torch.ops.rnnkernels_cuda_emulation


class _RnnLayer(torch.autograd.Function):
    """csrc/autograd.cpp's RnnLayerFunction on the emulated op pair: the same saved tensors,
    the same backward op call, one gradient per weight."""

    @staticmethod
    def forward(ctx, mode, has_biases, has_projection, batch_sizes, zoneout, need_workspace,
                x, h0, c0, *weights):
        out, h_n, c_n, ws = _emu().rnn_layer(mode, x, list(weights), has_biases, has_projection,
                                             h0, c0, batch_sizes, zoneout, need_workspace)
        ctx.save_for_backward(x, h0, c0, out, ws, *weights)
        ctx.args = (mode, has_biases, has_projection, batch_sizes, zoneout)
        ctx.mark_non_differentiable(ws, *(() if c0 is not None else (c_n,)))
        ctx.set_materialize_grads(False)
        return out, h_n, c_n, ws

    @staticmethod
    def backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_ws):
        x, h0, c0, out, ws, *weights = ctx.saved_tensors
        mode, has_biases, has_projection, batch_sizes, zoneout = ctx.args
        gx, gw, gh0, gc0 = _emu().rnn_layer_backward(
            mode, x, weights, has_biases, has_projection, h0, c0, out, ws, batch_sizes, zoneout,
            grad_out, grad_h_n, grad_c_n if c0 is not None else None, ctx.needs_input_grad[6])
        return (None,) * 6 + (gx if ctx.needs_input_grad[6] else None, gh0,
                              gc0 if c0 is not None else None, *gw)


class _Recorder:
    """The emulated op pair under the names functional.py calls, with what it was given."""

    def __init__(self):
        self.calls = []

    def rnn_layer(self, mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes,
                  zoneout, need_workspace):
        self.calls.append((mode, x.dtype, h0.dtype))
        return _RnnLayer.apply(mode, has_biases, has_projection, batch_sizes, zoneout,
                               need_workspace, x, h0, c0, *weights)


@pytest.fixture(scope="module")
def emulation():
    cuda_emulation.build()


@pytest.fixture
def cuda_path(emulation, monkeypatch):
    """The modules and functional.py on the emulated CUDA op pair, with CPU tensors; yields
    the recorder of the emulated calls."""
    recorder = _Recorder()
    monkeypatch.setattr(rnnkernels.nn._CellForward, "_fast_cell_weights",
                        lambda self, input, states: None)
    monkeypatch.setattr(rnnkernels.ops, "rnn_layer", recorder.rnn_layer)
    monkeypatch.setattr(RF, "_rnn_layer", recorder.rnn_layer)
    yield recorder


# ---------------------------------------------------------------- helpers

CASES = {
    "lstm": ("LSTM", dict()),
    "lstm_2l_bi": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "lstm_proj": ("LSTM", dict(proj_size=5)),
    "lstm_proj_2l_bi": ("LSTM", dict(proj_size=5, num_layers=2, bidirectional=True)),
    "lstm_nobias_bf": ("LSTM", dict(bias=False, batch_first=True)),
    "gru": ("GRU", dict()),
    "gru_2l_bi_bf": ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    "gru_nobias": ("GRU", dict(bias=False)),
    "rnn_tanh_2l_bi": ("RNN", dict(num_layers=2, bidirectional=True)),
    "rnn_relu": ("RNN", dict(nonlinearity="relu")),
    "rnn_relu_bi_nobias": ("RNN", dict(nonlinearity="relu", bidirectional=True, bias=False)),
}
INPUT_KINDS = ["dense", "packed", "unbatched"]


def _modules(name, dtype, seed=0):
    """(ours in dtype, torch.nn in dtype, float64 torch.nn), with the same dtype-rounded
    weights."""
    cls, kwargs = CASES[name]
    kwargs = dict(input_size=I, hidden_size=H, **kwargs)
    torch.manual_seed(seed)
    init = getattr(torch.nn, cls)(**kwargs)
    ours = getattr(rnnkernels, cls)(**kwargs).to(dtype)
    ours.load_state_dict(init.state_dict())
    rounded = {k: v.detach().double() for k, v in ours.state_dict().items()}
    reference = getattr(torch.nn, cls)(**kwargs).double()
    reference.load_state_dict(rounded)
    same_dtype = getattr(torch.nn, cls)(**kwargs).to(dtype)
    same_dtype.load_state_dict(ours.state_dict())
    return ours, same_dtype, reference


def _inputs(module, kind, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if module.bidirectional else 1
    states = module.num_layers * directions
    out_size = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    lstm = isinstance(module, torch.nn.LSTM)
    if kind == "unbatched":
        x, batch = torch.randn(T, I, generator=gen), ()
    else:
        x = torch.randn(*((B, T) if module.batch_first else (T, B)), I, generator=gen)
        batch = (B,)
    h0 = torch.randn(states, *batch, out_size, generator=gen)
    c0 = torch.randn(states, *batch, H, generator=gen) if lstm else None
    rounded = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return dict(kind=kind, x=rounded(x), h0=rounded(h0), c0=rounded(c0), seed=seed,
                dtype=dtype)


def _run(module, inputs, dtype):
    """Forward and backward with fixed (dtype-rounded) upstream gradients: {name: float64
    tensor} of the outputs and of the gradients of input, h0, c0 and every parameter."""
    leaf = lambda t: t.detach().clone().to(dtype).requires_grad_(True)  # noqa: E731
    x, h0 = leaf(inputs["x"]), leaf(inputs["h0"])
    c0 = None if inputs["c0"] is None else leaf(inputs["c0"])
    hx = h0 if c0 is None else (h0, c0)
    module.zero_grad(set_to_none=True)
    if inputs["kind"] == "packed":
        packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=module.batch_first,
                                      enforce_sorted=False)
        out, state = module(packed, hx)
        out = out.data
    else:
        out, state = module(x, hx)
    h_n, c_n = state if c0 is not None else (state, None)
    gen = torch.Generator().manual_seed(inputs["seed"] + 100)
    upstream = lambda t: torch.randn(t.shape, generator=gen).to(inputs["dtype"]).to(dtype)  # noqa: E731
    loss = (out * upstream(out)).sum() + (h_n * upstream(h_n)).sum()
    if c_n is not None:
        loss = loss + (c_n * upstream(c_n)).sum()
    loss.backward()
    result = {"output": out, "h_n": h_n, "grad_x": x.grad, "grad_h0": h0.grad}
    if c0 is not None:
        result.update(c_n=c_n, grad_c0=c0.grad)
    for name, p in module.named_parameters():
        result["grad_" + name] = p.grad
    return {k: v.detach().double() for k, v in result.items()}


def _rel_err(value, reference):
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_layers_match_float64_torch_nn(cuda_path, name, kind):
    ours, _, reference = _modules(name, torch.float64)
    inputs = _inputs(ours, kind, torch.float64)
    got = _run(ours, inputs, torch.float64)
    expected = _run(reference, inputs, torch.float64)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=lambda m, key=key: f"{key}: {m}")
    # One emulated op call per layer: the CUDA branch ran, not the CPU one.
    assert len(cuda_path.calls) == ours.num_layers, cuda_path.calls
    assert all(c[0].startswith(CASES[name][0].lower()) for c in cuda_path.calls)


def test_layers_without_grad_and_with_dropout(cuda_path):
    # need_workspace=False under no_grad; dropout between layers runs in the CUDA branch
    # too (p=1 zeroes the second layer's input: its output is the bias-only recurrence).
    ours, _, reference = _modules("gru_2l_bi_bf", torch.float64)
    inputs = _inputs(ours, "dense", torch.float64)
    with torch.no_grad():
        got, h_got = ours(inputs["x"], inputs["h0"])
        expected, h_expected = reference(inputs["x"], inputs["h0"])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h_got, h_expected)
    ours.dropout, reference.dropout = 1.0, 1.0
    ours.train(), reference.train()
    got, _ = ours(inputs["x"], inputs["h0"])
    expected, _ = reference(inputs["x"], inputs["h0"])
    torch.testing.assert_close(got, expected)
    assert len(cuda_path.calls) == 4


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("name", ["lstm_2l_bi", "lstm_proj", "gru_2l_bi_bf", "rnn_relu_bi_nobias"])
def test_zoneout_matches_the_reference(cuda_path, name, packed):
    # Zoneout weights drawn per layer (reference.zoneout_weights) reach the op pair in
    # the CUDA branch: values and every gradient against rnnkernels.reference in float64,
    # under the same seed.
    from rnnkernels import reference as R

    cls, kwargs = CASES[name]
    extra = dict(zoneout_h=0.3, **(dict(zoneout_c=0.5) if cls == "LSTM" else {}))
    torch.manual_seed(2)
    module = getattr(rnnkernels, cls)(I, H, dtype=torch.float64, **kwargs, **extra).train()
    inputs = _inputs(module, "dense", torch.float64)
    x = inputs["x"].clone().requires_grad_(True)
    h0 = inputs["h0"].clone().requires_grad_(True)
    c0 = None if inputs["c0"] is None else inputs["c0"].clone().requires_grad_(True)
    hx = h0 if c0 is None else (h0, c0)
    if module.batch_first:
        x_tm = x.transpose(0, 1)
    else:
        x_tm = x
    if packed:
        data_in = pack_padded_sequence(x_tm, torch.tensor(LENGTHS), enforce_sorted=False)
        data, batch_sizes = data_in.data, data_in.batch_sizes
        perm, unsort = data_in.sorted_indices, data_in.unsorted_indices
        ref_hx = tuple(s[:, perm] for s in hx) if c0 is not None else hx[:, perm]
    else:
        data_in, data, batch_sizes, ref_hx = x, x_tm, None, hx
    torch.manual_seed(7)
    out, hidden = module(data_in, hx)
    torch.manual_seed(7)
    args = (module._flat_weights, module.bias, module.num_layers, module.dropout, True,
            module.bidirectional, False, batch_sizes)
    if cls == "LSTM":
        ref = R.lstm(data, ref_hx, *args, zoneout_h=0.3, zoneout_c=0.5)
    elif cls == "GRU":
        ref = R.gru(data, ref_hx, *args, zoneout_h=0.3)
    else:
        ref = R.rnn(data, ref_hx, *args, module.nonlinearity, zoneout_h=0.3)
    ref_out, ref_hidden = ref[0], list(ref[1:])
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    if packed:
        out = out.data
        ref_hidden = [s[:, unsort] for s in ref_hidden]
    elif module.batch_first:
        ref_out = ref_out.transpose(0, 1)
    results, expected = [out, *hidden], [ref_out, *ref_hidden]
    for k, (g, e) in enumerate(zip(results, expected)):
        torch.testing.assert_close(g, e, msg=lambda m, k=k: f"result {k}: {m}")
    upstream = [torch.randn_like(t) for t in results]
    leaves = [x, h0, *([c0] if c0 is not None else []), *module.parameters()]
    got = torch.autograd.grad(results, leaves, upstream, retain_graph=True)
    want = torch.autograd.grad(expected, leaves, upstream)
    for k, (g, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, e, msg=lambda m, k=k: f"gradient {k}: {m}")
    assert len(cuda_path.calls) == module.num_layers


# ---------------------------------------------------------------- cells


@pytest.mark.parametrize("state", ["given", "none", "unbatched"])
@pytest.mark.parametrize("cls,kwargs", [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
                                        ("RNNCell", dict(nonlinearity="relu")),
                                        ("GRUCell", dict(bias=False))],
                         ids=["lstm", "gru", "rnn_tanh", "rnn_relu", "gru_nobias"])
def test_cells_match_float64_torch_nn(cuda_path, cls, kwargs, state):
    torch.manual_seed(3)
    init = getattr(torch.nn, cls)(I, H, **kwargs)
    ours = getattr(rnnkernels, cls)(I, H, **kwargs).double()
    ours.load_state_dict(init.state_dict())
    reference = getattr(torch.nn, cls)(I, H, **kwargs).double()
    reference.load_state_dict(init.state_dict())
    batch = () if state == "unbatched" else (B,)
    x = torch.randn(*batch, I, dtype=torch.float64)
    h = torch.randn(*batch, H, dtype=torch.float64)
    c = torch.randn(*batch, H, dtype=torch.float64)
    results = []
    for module in (ours, reference):
        xi = x.clone().requires_grad_(True)
        hi, ci = h.clone().requires_grad_(True), c.clone().requires_grad_(True)
        if state == "none":
            hx = None
        else:
            hx = (hi, ci) if cls == "LSTMCell" else hi
        out = module(xi, hx)
        outs = list(out) if isinstance(out, tuple) else [out]
        gen = torch.Generator().manual_seed(5)
        sum(((o * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs)).backward()
        grads = [xi.grad] + ([] if state == "none" else [hi.grad] + ([ci.grad] if cls == "LSTMCell" else []))
        results.append([o.detach() for o in outs] + grads + [p.grad for p in module.parameters()])
        module.zero_grad(set_to_none=True)
    got, expected = results
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, msg=lambda m, k=k: f"result {k}: {m}")
    assert len(cuda_path.calls) == 1, cuda_path.calls


# ---------------------------------------------------------------- 16-bit inputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["lstm_proj_2l_bi", "gru_2l_bi_bf", "rnn_tanh_2l_bi"])
def test_low_precision_layers_within_twice_torch_nn_error(cuda_path, name, dtype):
    """16-bit layers on the CUDA host (its float32 x_proj, Note [cuda x_proj in float32]):
    every output and gradient is within twice torch.nn's own error in that dtype (torch.nn
    on the CPU here), against float64 torch.nn on the same rounded weights and inputs."""
    ours, same_dtype, reference = _modules(name, dtype)
    inputs = _inputs(ours, "packed", dtype)
    got = _run(ours, inputs, dtype)
    assert cuda_path.calls and all(c[1:] == (dtype, dtype) for c in cuda_path.calls), \
        cuda_path.calls
    theirs = _run(same_dtype, inputs, dtype)
    expected = _run(reference, inputs, torch.float64)
    for key in expected:
        ours_err, theirs_err = _rel_err(got[key], expected[key]), _rel_err(theirs[key], expected[key])
        assert ours_err <= 2 * theirs_err + 1e-7, (
            f"{key}: our error {ours_err:.2e}, torch.nn's {theirs_err:.2e} in {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_low_precision_cells_keep_their_dtype(cuda_path, cls, dtype):
    torch.manual_seed(4)
    ours = getattr(rnnkernels, cls)(I, H).to(dtype)
    x = torch.randn(B, I).to(dtype).requires_grad_(True)
    out = ours(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    assert all(o.dtype == dtype for o in outs)
    sum(o.float().sum() for o in outs).backward()
    assert x.grad.dtype == dtype and all(p.grad.dtype == dtype for p in ours.parameters())
    assert len(cuda_path.calls) == 1 and cuda_path.calls[0][0].startswith(cls[:-4].lower())
    assert cuda_path.calls[0][1:] == (dtype, dtype)


