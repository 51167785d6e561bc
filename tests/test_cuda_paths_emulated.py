"""rnnkernels' CUDA-only Python branches, run in CI without a GPU.

On a GPU the modules take branches of rnnkernels/functional.py that CPU tensors never
reach: the input projection of all steps as its own GEMM (rnnkernels/_projection.py,
float32 x_proj for 16-bit input), the x_proj ops (ops.lstm_forward, gru_forward,
rnn_forward) with the C++ autograd Functions of csrc/autograd.cpp, and the cells' x_proj
branch. Here those branches run on the CPU against the CUDA ops' emulation
(tests/cuda_emulation.py: the CUDA host code and kernels compiled for the CPU), through
the fixture `cuda_path`, which

  * makes functional.py take its non-CPU branches (_fused_input is False: the layers and
    cells call the x_proj ops instead of the CPU's *_forward_fused ops) and the cell
    modules skip their CPU fast path (_fast_cell_weights);
  * routes ops.lstm_forward / gru_forward / rnn_forward to the emulated ops through
    autograd Functions that mirror csrc/autograd.cpp (LstmFunction, GruFunction,
    RnnFunction): the same saved tensors, the same backward op call, one gradient slot per
    argument; the backward is the emulated CUDA backward op;
  * counts the emulated calls, so that a test fails, instead of passing on the CPU path,
    should functional.py stop routing these calls through the x_proj ops.

Every result and every gradient (input, h0, c0, every parameter) is compared with float64
torch.nn: the three cells, layers, directions, projection, batch_first, no bias, dense,
packed (unsorted) and unbatched input, and the three *Cell modules; 16-bit inputs against
torch.nn's own error in that dtype; zoneout (beyond torch.nn) against rnnkernels.reference. What this does not cover: the real CUDA dispatch
(device checks, the CUDA autograd and autocast kernels of the C++ ops), cuBLAS and the GPU
itself; tests/test_cuda.py checks those on a GPU.
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


def _needs_workspace(op, ws, out):
    # check_workspace in csrc/autograd.cpp
    if ws.shape[1] != out.shape[0]:
        raise RuntimeError(f"{op} ran with need_workspace=False, so its backward cannot run")


class _Lstm(torch.autograd.Function):
    """csrc/autograd.cpp's LstmFunction on the emulated ops. Arguments: x_proj, h0, c0,
    then the flattened lists w_hh, b_hh, w_hr (their lengths in `sizes`)."""

    @staticmethod
    def forward(ctx, sizes, batch_sizes, need_workspace, zoneout, x_proj, h0, c0, *weights):
        d, nb, nr = sizes
        w_hh, b_hh, w_hr = (list(weights[:d]), list(weights[d:d + nb]),
                            list(weights[d + nb:d + nb + nr]))
        out, h_n, c_n, ws = _emu().lstm_forward(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes,
                                                need_workspace, zoneout)
        ctx.save_for_backward(h0, c0, out, ws, *weights)
        ctx.sizes, ctx.batch_sizes, ctx.zoneout = sizes, batch_sizes, zoneout
        ctx.mark_non_differentiable(ws)
        ctx.set_materialize_grads(False)
        return out, h_n, c_n, ws

    @staticmethod
    def backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_ws):
        h0, c0, out, ws, *weights = ctx.saved_tensors
        d, nb, nr = ctx.sizes
        _needs_workspace("rnnkernels::lstm_forward", ws, out)
        gx, gh0, gc0, gw_hh, gb_hh, gw_hr = _emu().lstm_backward(
            grad_out, grad_h_n, grad_c_n, weights[:d], weights[d:d + nb],
            weights[d + nb:d + nb + nr], h0, c0, out, ws, ctx.batch_sizes, ctx.zoneout)
        return (None, None, None, None, gx, gh0, gc0, *gw_hh, *gb_hh, *gw_hr)


class _SingleState(torch.autograd.Function):
    """csrc/autograd.cpp's GruFunction / RnnFunction on the emulated ops."""

    @staticmethod
    def forward(ctx, cell, nonlinearity, n_b_hh, batch_sizes, need_workspace, zoneout, x_proj,
                h0, *weights):
        d = len(weights) - n_b_hh
        w_hh, b_hh = list(weights[:d]), list(weights[d:])
        if cell == "gru":
            out, h_n, ws = _emu().gru_forward(x_proj, w_hh, b_hh, h0, batch_sizes,
                                              need_workspace, zoneout)
        else:
            out, h_n, ws = _emu().rnn_forward(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity,
                                              need_workspace, zoneout)
        ctx.save_for_backward(h0, out, ws, *weights)
        ctx.cell, ctx.nonlinearity, ctx.d = cell, nonlinearity, d
        ctx.batch_sizes, ctx.zoneout = batch_sizes, zoneout
        ctx.need_workspace = need_workspace
        ctx.mark_non_differentiable(ws)
        ctx.set_materialize_grads(False)
        return out, h_n, ws

    @staticmethod
    def backward(ctx, grad_out, grad_h_n, _grad_ws):
        h0, out, ws, *weights = ctx.saved_tensors
        w_hh, b_hh = weights[:ctx.d], weights[ctx.d:]
        if not ctx.need_workspace:
            raise RuntimeError(f"rnnkernels::{ctx.cell}_forward ran with need_workspace=False")
        if ctx.cell == "gru":
            gx, gh0, gw_hh, gb_hh = _emu().gru_backward(grad_out, grad_h_n, w_hh, b_hh, h0, out,
                                                        ws, ctx.batch_sizes, ctx.zoneout)
        else:
            gx, gh0, gw_hh, gb_hh = _emu().rnn_backward(grad_out, grad_h_n, w_hh, b_hh, h0, out,
                                                        ws, ctx.batch_sizes, ctx.nonlinearity,
                                                        ctx.zoneout)
        return (None, None, None, None, None, None, gx, gh0, *gw_hh, *gb_hh)


class _Recorder:
    """The emulated ops under the names functional.py calls, with what they were given."""

    def __init__(self):
        self.calls = []

    def lstm_forward(self, x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace,
                     zoneout=None):
        self.calls.append(("lstm", x_proj.dtype, h0.dtype))
        sizes = (len(w_hh), len(b_hh), len(w_hr))
        return _Lstm.apply(sizes, batch_sizes, need_workspace, zoneout, x_proj, h0, c0, *w_hh,
                           *b_hh, *w_hr)

    def gru_forward(self, x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout=None):
        self.calls.append(("gru", x_proj.dtype, h0.dtype))
        return _SingleState.apply("gru", "", len(b_hh), batch_sizes, need_workspace, zoneout,
                                  x_proj, h0, *w_hh, *b_hh)

    def rnn_forward(self, x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                    zoneout=None):
        self.calls.append(("rnn", x_proj.dtype, h0.dtype))
        return _SingleState.apply("rnn", nonlinearity, len(b_hh), batch_sizes, need_workspace,
                                  zoneout, x_proj, h0, *w_hh, *b_hh)


@pytest.fixture(scope="module")
def emulation():
    cuda_emulation.build()


@pytest.fixture
def cuda_path(emulation, monkeypatch):
    """functional.py's CUDA branches on CPU tensors, on the emulated CUDA ops; yields the
    recorder of the emulated calls."""
    recorder = _Recorder()
    monkeypatch.setattr(RF, "_fused_input", lambda x: False)
    monkeypatch.setattr(rnnkernels.nn._CellForward, "_fast_cell_weights",
                        lambda self, input, states: None)
    for name in ("lstm_forward", "gru_forward", "rnn_forward"):
        monkeypatch.setattr(rnnkernels.ops, name, getattr(recorder, name))
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
    assert all(c[0] == CASES[name][0].lower() for c in cuda_path.calls)


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
    # Zoneout weights drawn per layer (reference.zoneout_weights) reach the x_proj ops in
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
def test_low_precision_layers_hand_over_float32_x_proj(cuda_path, name, dtype):
    """Note [cuda x_proj in float32]: for 16-bit input the layers' x_proj reaches the ops
    in float32 (the states and results keep the input dtype), and every output and
    gradient is within twice torch.nn's own error in that dtype (torch.nn on the CPU here),
    against float64 torch.nn on the same rounded weights and inputs."""
    ours, same_dtype, reference = _modules(name, dtype)
    inputs = _inputs(ours, "packed", dtype)
    got = _run(ours, inputs, dtype)
    assert cuda_path.calls and all(c[1:] == (torch.float32, dtype) for c in cuda_path.calls), \
        cuda_path.calls
    theirs = _run(same_dtype, inputs, dtype)
    expected = _run(reference, inputs, torch.float64)
    for key in expected:
        ours_err, theirs_err = _rel_err(got[key], expected[key]), _rel_err(theirs[key], expected[key])
        assert ours_err <= 2 * theirs_err + 1e-7, (
            f"{key}: our error {ours_err:.2e}, torch.nn's {theirs_err:.2e} in {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_low_precision_cells_hand_over_float32_x_proj(cuda_path, cls, dtype):
    torch.manual_seed(4)
    ours = getattr(rnnkernels, cls)(I, H).to(dtype)
    x = torch.randn(B, I).to(dtype).requires_grad_(True)
    out = ours(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    assert all(o.dtype == dtype for o in outs)
    sum(o.float().sum() for o in outs).backward()
    assert x.grad.dtype == dtype and all(p.grad.dtype == dtype for p in ours.parameters())
    assert cuda_path.calls == [(cls[:-4].lower(), torch.float32, dtype)]


def test_float32_projection_gradients(cuda_path):
    """rnnkernels/_projection.py's float32 projection of 16-bit x: its backward against
    float64 autograd of x W^T + b on the same 16-bit values; the weight and bias gradients
    summed in float32 and rounded once equal the float64 sums rounded once (up to ties)."""
    from rnnkernels._projection import x_proj

    torch.manual_seed(6)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(300, 9).to(dtype).requires_grad_(True)
        w = [torch.randn(12, 9).to(dtype).requires_grad_(True) for _ in range(2)]
        b = [torch.randn(12).to(dtype).requires_grad_(True) for _ in range(2)]
        out = x_proj(x, w, b)
        assert out.dtype == torch.float32 and out.shape == (300, 24)
        grad = torch.randn(300, 24).to(dtype).float()
        got = torch.autograd.grad(out, [x, *w, *b], grad)
        leaves = [t.detach().double().requires_grad_(True) for t in (x, *w, *b)]
        ref = leaves[0] @ torch.cat(leaves[1:3]).t() + torch.cat(leaves[3:5])
        torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-6, atol=1e-6)
        expected = torch.autograd.grad(ref, leaves, grad.double())
        for k, (g, e) in enumerate(zip(got, expected)):
            assert g.dtype == dtype
            # One rounding of the float64 result: within a unit in the last place, or an
            # absolute 1e-4 where float32's sums of 300 terms (magnitude about 10) cancel.
            torch.testing.assert_close(g.double(), e.to(dtype).double(), rtol=torch.finfo(dtype).eps,
                                       atol=1e-4, msg=lambda m, k=k: f"gradient {k}: {m}")
