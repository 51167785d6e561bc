"""The CUDA backend on a GPU: equivalence, precision, gradients, op registration.

References, for the same weights and inputs (16-bit runs give the reference exactly the
rounded values they use, so only computation error is measured):
  * float64 torch.nn on the CPU (the golden reference);
  * torch.nn on CUDA (cuDNN) in the same dtype.
float32 runs with TF32 off for both cuBLAS and cuDNN (Note [cuda tf32] in
csrc/cuda/recurrence_cuda.cpp) and must agree within assert_close's float32 defaults;
float64 within its float64 defaults; float16 / bfloat16 must have a relative error (norm
of the difference over the norm of the reference) at most twice torch.nn's own error in
that dtype, for every output and every gradient.

Everything but the fake-kernel check skips, with the reason, without a CUDA device. On a
machine with one, a build without the CUDA kernels fails test_cuda_kernels_are_built
instead of letting the modules silently fall back to torch's implementation.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from rnnkernels import functional as RF
from rnnkernels import ops

HAS_CUDA = torch.cuda.is_available()
CUDA_INFO = rnnkernels.build_info().get("cuda") if HAS_CUDA else None

_NO_GPU = "needs a CUDA device (torch.cuda.is_available() is False)"
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason=_NO_GPU)


def needs_kernels(test):
    """A GPU test of our CUDA kernels: skipped without a GPU, or (test_cuda_kernels_are_built
    failing instead) when the build lacks the CUDA kernels."""
    reason = _NO_GPU if not HAS_CUDA else "rnnkernels was built without its CUDA kernels"
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA_INFO, reason=reason)(test))


DEVICE = "cuda"
T, B, I, H = 7, 5, 33, 17
LENGTHS = [7, 3, 5, 1, 7]  # unsorted: PackedSequence with enforce_sorted=False


@pytest.mark.gpu
@requires_gpu
def test_cuda_kernels_are_built():
    assert CUDA_INFO, ("torch sees a GPU but rnnkernels._C has no CUDA kernels: rebuild on a "
                       "machine with nvcc (python setup.py build_ext --inplace)")
    assert set(CUDA_INFO["dtypes"]) == {"float32", "float64", "float16", "bfloat16"}
    major, minor = torch.cuda.get_device_capability()
    assert f"sm_{major}{minor}" in CUDA_INFO["arch_list"], CUDA_INFO


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def no_tf32():
    """float32 in full precision for cuBLAS (our GEMMs) and cuDNN (torch.nn)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def poison_allocator(stream=None):
    """Fills blocks of both pools of the caching allocator (small: requests up to 1 MB,
    large: the rest) with all-ones bytes, a NaN in every floating-point format, and frees
    them, so that an output element a kernel fails to write shows up as NaN. The blocks are
    allocated on `stream` (default: the current stream): the caching allocator hands a
    freed block only to later requests on the stream it was allocated on, so a test
    poisons the stream it then allocates on."""
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        blocks = [torch.full(((1 << 20) // 4 - 128,), -1, dtype=torch.int32, device=DEVICE)
                  for _ in range(64)]
        blocks.append(torch.full((1 << 26,), -1, dtype=torch.int32, device=DEVICE))
        torch.cuda.synchronize()
        del blocks


def test_poison_allocator_poisons_the_stream_it_is_given(monkeypatch):
    # No GPU needed: every block is allocated while the given stream is current. Blocks
    # poisoned on the default stream never reach a side stream's allocations, which is how
    # test_runs_on_the_current_stream checked less than it said (issue 18).
    current = ["default"]

    @contextlib.contextmanager
    def stream(s):
        previous, current[0] = current[0], s
        try:
            yield
        finally:
            current[0] = previous

    allocated_on = []
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch, "full", lambda *args, **kwargs: allocated_on.append(current[0]))
    poison_allocator("side")
    assert len(allocated_on) == 65 and set(allocated_on) == {"side"}, allocated_on
    assert current == ["default"]


CASES = {
    "lstm": ("LSTM", dict()),
    "lstm_2l_bi": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "lstm_proj_2l_bi": ("LSTM", dict(proj_size=5, num_layers=2, bidirectional=True)),
    "lstm_proj": ("LSTM", dict(proj_size=7)),
    "lstm_nobias_bf": ("LSTM", dict(bias=False, batch_first=True)),
    "gru": ("GRU", dict()),
    "gru_2l_bi_bf": ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    "gru_nobias": ("GRU", dict(bias=False)),
    "rnn_tanh_2l_bi": ("RNN", dict(num_layers=2, bidirectional=True)),
    "rnn_relu": ("RNN", dict(nonlinearity="relu")),
    "rnn_relu_bi_nobias": ("RNN", dict(nonlinearity="relu", bidirectional=True, bias=False)),
}
INPUT_KINDS = ["dense", "packed", "unbatched"]


def make_modules(name, dtype, seed=0):
    """(ours on CUDA in dtype, torch.nn on CUDA in dtype, float64 torch.nn on CPU), with the
    same (dtype-rounded) weights."""
    cls, kwargs = CASES[name]
    kwargs = dict(input_size=I, hidden_size=H, **kwargs)
    torch.manual_seed(seed)
    init = getattr(torch.nn, cls)(**kwargs)
    ours = getattr(rnnkernels, cls)(**kwargs).to(DEVICE, dtype)
    ours.load_state_dict(init.state_dict())
    rounded = {k: v.detach().double().cpu() for k, v in ours.state_dict().items()}
    reference = getattr(torch.nn, cls)(**kwargs).double()
    reference.load_state_dict(rounded)
    cudnn = getattr(torch.nn, cls)(**kwargs).to(DEVICE, dtype)
    cudnn.load_state_dict(ours.state_dict())
    return ours, cudnn, reference


def make_inputs(module, kind, dtype, seed=1):
    """Inputs and initial state in dtype on CUDA, and random upstream gradients."""
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if module.bidirectional else 1
    layers = module.num_layers
    out_size = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    is_lstm = isinstance(module, torch.nn.LSTM)
    batch_first = module.batch_first
    if kind == "unbatched":
        x = torch.randn(T, I, generator=gen)
        h0 = torch.randn(layers * directions, out_size, generator=gen)
        c0 = torch.randn(layers * directions, H, generator=gen) if is_lstm else None
    else:
        x = torch.randn(B, T, I, generator=gen) if batch_first else torch.randn(T, B, I, generator=gen)
        h0 = torch.randn(layers * directions, B, out_size, generator=gen)
        c0 = torch.randn(layers * directions, B, H, generator=gen) if is_lstm else None
    as_dtype = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return dict(kind=kind, dtype=dtype, x=as_dtype(x), h0=as_dtype(h0), c0=as_dtype(c0), seed=seed)


def run(module, inputs, device, dtype):
    """Forward + backward with fixed upstream gradients. Returns {name: float64 CPU tensor}
    for the outputs and the gradients of the input, the initial state and every parameter."""
    kind = inputs["kind"]
    x = inputs["x"].detach().to(device, dtype).requires_grad_(True)
    h0 = inputs["h0"].detach().to(device, dtype).requires_grad_(True)
    c0 = inputs["c0"]
    if c0 is not None:
        c0 = c0.detach().to(device, dtype).requires_grad_(True)
    hx = (h0, c0) if c0 is not None else h0
    module.zero_grad(set_to_none=True)
    if kind == "packed":
        lengths = torch.tensor(LENGTHS)
        packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first,
                                      enforce_sorted=False)
        out, state = module(packed, hx)
        out_data = out.data
    else:
        out, state = module(x, hx)
        out_data = out
    h_n, c_n = state if c0 is not None else (state, None)
    # Upstream gradients rounded to the inputs' dtype, so every run sees the same values.
    gen = torch.Generator().manual_seed(inputs["seed"] + 100)
    upstream = lambda t: torch.randn(t.shape, generator=gen).to(inputs["dtype"]).to(device, dtype)  # noqa: E731
    loss = (out_data * upstream(out_data)).sum() + (h_n * upstream(h_n)).sum()
    if c_n is not None:
        loss = loss + (c_n * upstream(c_n)).sum()
    loss.backward()
    result = {"output": out_data, "h_n": h_n, "grad_x": x.grad, "grad_h0": h0.grad}
    if c0 is not None:
        result.update(c_n=c_n, grad_c0=c0.grad)
    for name, p in module.named_parameters():
        result["grad_" + name] = p.grad
    if kind == "packed":
        padded, _ = pad_packed_sequence(out, batch_first=module.batch_first)
        result["output_padded"] = padded
    return {k: v.detach().double().cpu() for k, v in result.items()}


def rel_err(value, reference):
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def assert_all_close(ours, reference, what, **tol):
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], **tol,
                                   msg=lambda m, key=key: f"{what}: {key}: {m}")


FP32_TOL = dict(rtol=1.3e-6, atol=1e-5)  # assert_close's float32 defaults
FP64_TOL = dict(rtol=1e-7, atol=1e-7)


def _kernels_run(module, inputs):
    x = inputs["x"]
    assert RF.kernels_support(x), f"rnnkernels would fall back to torch for {x.dtype} on {x.device}"


# ---------------------------------------------------------------- equivalence


@needs_kernels
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_float32_matches_float64_reference_and_cudnn(name, kind):
    ours, cudnn, reference = make_modules(name, torch.float32)
    inputs = make_inputs(ours, kind, torch.float32)
    _kernels_run(ours, inputs)
    with no_tf32():
        got = run(ours, inputs, DEVICE, torch.float32)
        by_cudnn = run(cudnn, inputs, DEVICE, torch.float32)
    expected = run(reference, inputs, "cpu", torch.float64)
    assert_all_close(got, expected, "vs float64 torch.nn", **FP32_TOL)
    assert_all_close(got, by_cudnn, "vs cuDNN float32", **FP32_TOL)


@needs_kernels
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_float64_matches_float64_reference(name, kind):
    ours, _, reference = make_modules(name, torch.float64)
    inputs = make_inputs(ours, kind, torch.float64)
    _kernels_run(ours, inputs)
    got = run(ours, inputs, DEVICE, torch.float64)
    expected = run(reference, inputs, "cpu", torch.float64)
    assert_all_close(got, expected, "vs float64 torch.nn", **FP64_TOL)


def _check_low_precision(name, kind, dtype):
    ours, cudnn, reference = make_modules(name, dtype)
    inputs = make_inputs(ours, kind, dtype)
    _kernels_run(ours, inputs)
    got = run(ours, inputs, DEVICE, dtype)
    by_cudnn = run(cudnn, inputs, DEVICE, dtype)
    expected = run(reference, inputs, "cpu", torch.float64)
    failures = []
    for key in expected:
        ours_err, nn_err = rel_err(got[key], expected[key]), rel_err(by_cudnn[key], expected[key])
        if not ours_err <= 2 * nn_err:
            failures.append(f"{key}: rnnkernels {ours_err:.3e} > 2 x torch.nn {nn_err:.3e}")
    assert not failures, f"{name}/{kind}/{dtype}:\n" + "\n".join(failures)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_error_at_most_twice_torch_nn(name, kind, dtype):
    _check_low_precision(name, kind, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["lstm_proj_2l_bi", "gru_2l_bi_bf", "rnn_tanh_2l_bi"])
def test_low_precision_with_products_in_input_dtype(monkeypatch, name, dtype):
    # The fallback should ATen refuse mm.dtype_out at run time (Note [cuda precision]): GEMM
    # results rounded to the input dtype.
    monkeypatch.setenv("RNNKERNELS_CUDA_LOWP_PRODUCTS", "input")
    _check_low_precision(name, "packed", dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["lstm_proj_2l_bi", "gru_2l_bi_bf", "rnn_relu"])
def test_autocast_like_torch_nn(name, dtype):
    # Note [cuda autocast]: float32 modules under torch.autocast run in the autocast dtype,
    # as cuDNN does for torch.nn; outputs in that dtype, errors at most 2x torch.nn's.
    ours, cudnn, reference = make_modules(name, torch.float32)
    inputs = make_inputs(ours, "packed", torch.float32)
    results = {}
    for key, module, device, dt in (("ours", ours, DEVICE, torch.float32),
                                    ("nn", cudnn, DEVICE, torch.float32),
                                    ("ref", reference, "cpu", torch.float64)):
        context = torch.autocast("cuda", dtype=dtype) if device == DEVICE else contextlib.nullcontext()
        with context:
            if device == DEVICE:
                out, _ = module(inputs["x"])
                assert out.dtype == dtype, f"{key}: output dtype {out.dtype} under autocast"
            results[key] = run(module, inputs, device, dt)
    failures = []
    for key in results["ref"]:
        ours_err = rel_err(results["ours"][key], results["ref"][key])
        nn_err = rel_err(results["nn"][key], results["ref"][key])
        if not ours_err <= 2 * nn_err:
            failures.append(f"{key}: rnnkernels {ours_err:.3e} > 2 x torch.nn {nn_err:.3e}")
    assert not failures, f"{name}/autocast {dtype}:\n" + "\n".join(failures)


def _small_layer(mode, dtype, device, need_workspace=True):
    """rnn_layer's arguments: 6 rows of input size 4, batch 3, hidden size 2, one direction,
    no biases."""
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[mode]
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
    c0 = make(1, 3, 2) if mode == "lstm" else None
    return (mode, make(6, 4), [make(gates * 2, 4), make(gates * 2, 2)], False, False,
            make(1, 3, 2), c0, None, None, need_workspace)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_output_dtypes_and_workspace_rule(dtype):
    ws_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out, h_n, c_n, ws = torch.ops.rnnkernels.rnn_layer(*_small_layer("lstm", dtype, DEVICE))
    assert (out.dtype, h_n.dtype, c_n.dtype, ws.dtype) == (dtype, dtype, dtype, ws_dtype)
    assert ws.shape == (1, 6, 10)
    out, h_n, c_n, ws = torch.ops.rnnkernels.rnn_layer(*_small_layer("gru", dtype, DEVICE))
    assert (out.dtype, h_n.dtype, ws.dtype) == (dtype, dtype, ws_dtype)
    assert c_n.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_fake_kernels_follow_the_workspace_dtype_rule(dtype):
    # No GPU needed: the fake kernels (rnnkernels/ops.py) are what torch.compile traces.
    from torch._subclasses.fake_tensor import FakeTensorMode

    ws_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with FakeTensorMode():
        out = torch.ops.rnnkernels.rnn_layer(*_small_layer("lstm", dtype, "cpu"))
        assert [t.dtype for t in out] == [dtype, dtype, dtype, ws_dtype]
        assert out[3].shape == (1, 6, 10)
        out = torch.ops.rnnkernels.rnn_layer(*_small_layer("gru", dtype, "cpu"))
        assert [t.dtype for t in out] == [dtype, dtype, dtype, ws_dtype]
        out = torch.ops.rnnkernels.rnn_layer(*_small_layer("rnn_tanh", dtype, "cpu", False))
        assert [t.dtype for t in out] == [dtype, dtype, dtype, ws_dtype]
        assert out[3].shape == (1, 0, 0)


# ---------------------------------------------------------------- cells


@needs_kernels
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_match_float64_reference(cls):
    torch.manual_seed(3)
    init = getattr(torch.nn, cls)(I, H)
    ours = getattr(rnnkernels, cls)(I, H).to(DEVICE)
    ours.load_state_dict(init.state_dict())
    reference = getattr(torch.nn, cls)(I, H).double()
    reference.load_state_dict(init.state_dict())
    x = torch.randn(B, I)
    h = torch.randn(B, H)
    state = (h, torch.randn(B, H)) if cls == "LSTMCell" else h
    to = lambda t, dev, dt: t.detach().to(dev, dt).requires_grad_(True)  # noqa: E731
    results = []
    for module, dev, dt in ((ours, DEVICE, torch.float32), (reference, "cpu", torch.float64)):
        xi = to(x, dev, dt)
        si = tuple(to(s, dev, dt) for s in state) if isinstance(state, tuple) else to(state, dev, dt)
        with no_tf32():
            out = module(xi, si)
        outs = out if isinstance(out, tuple) else (out,)
        sum(o.sum() * (k + 1) for k, o in enumerate(outs)).backward()
        grads = [xi.grad] + ([s.grad for s in si] if isinstance(si, tuple) else [si.grad])
        grads += [p.grad for p in module.parameters()]
        results.append([t.detach().double().cpu() for t in list(outs) + grads])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, **FP32_TOL)


# ---------------------------------------------------------------- dropout


@needs_kernels
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_dropout_one_zeroes_the_inputs_of_upper_layers(cls):
    # p = 1 makes dropout deterministic (the second layer sees zeros), so the result can be
    # compared with float64 torch.nn in training mode.
    torch.manual_seed(4)
    kwargs = dict(input_size=I, hidden_size=H, num_layers=2, dropout=1.0)
    init = getattr(torch.nn, cls)(**kwargs)
    ours = getattr(rnnkernels, cls)(**kwargs).to(DEVICE).train()
    ours.load_state_dict(init.state_dict())
    reference = getattr(torch.nn, cls)(**kwargs).double().train()
    reference.load_state_dict(init.state_dict())
    x = torch.randn(T, B, I)
    with no_tf32():
        got, _ = ours(x.to(DEVICE))
    expected, _ = reference(x.double())
    torch.testing.assert_close(got.double().cpu(), expected, **FP32_TOL)


@needs_kernels
def test_dropout_between_layers_is_random_and_seeded():
    kwargs = dict(input_size=I, hidden_size=H, num_layers=3, dropout=0.5)
    model = rnnkernels.LSTM(**kwargs).to(DEVICE).train()
    x = torch.randn(T, B, I, device=DEVICE)
    torch.manual_seed(5)
    a, _ = model(x)
    torch.manual_seed(5)
    b, _ = model(x)
    torch.manual_seed(6)
    c, _ = model(x)
    model.eval()
    d, _ = model(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    assert torch.isfinite(a).all()


# ---------------------------------------------------------------- gradients


def _gradcheck_case(cell, directions, packed, proj=False, relu=False):
    """(f, inputs): f(x, h0[, c0], *weights, keep=None) runs rnn_layer on the inputs' device
    with zoneout weights keep, returning output, h_n (, c_n); inputs are float64 leaves on
    DEVICE."""
    gen = torch.Generator().manual_seed(7)
    dev, dt = DEVICE, torch.float64
    steps, batch, hidden, input_size = 4, 3, 3, 2
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    mode = cell if cell != "rnn" else ("rnn_relu" if relu else "rnn_tanh")
    lstm = cell == "lstm"
    out_size = 2 if proj else hidden
    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    rows = int(batch_sizes.sum()) if packed else steps * batch
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt).to(dev).requires_grad_(True)  # noqa: E731
    x = rnd(rows, input_size)
    weights = []
    for _ in range(directions):
        weights += [rnd(gates * hidden, input_size), rnd(gates * hidden, out_size),
                    rnd(gates * hidden), rnd(gates * hidden)]
        if proj:
            weights.append(rnd(out_size, hidden))
    h0 = rnd(directions, batch, out_size)
    states = (h0, rnd(directions, batch, hidden)) if lstm else (h0,)

    def f(x, h0, *rest, keep=None):
        c0, weights = (rest[0], rest[1:]) if lstm else (None, rest)
        out = ops.rnn_layer(mode, x, list(weights), True, proj, h0, c0, batch_sizes, keep, True)
        return out[:3] if lstm else out[:2]

    return f, (x, *states, *weights)


GRADCHECK_CASES = [
    dict(cell="lstm", directions=1, packed=False),
    dict(cell="lstm", directions=2, packed=True),
    dict(cell="lstm", directions=2, packed=True, proj=True),
    dict(cell="gru", directions=1, packed=False),
    dict(cell="gru", directions=2, packed=True),
    dict(cell="rnn", directions=2, packed=True),
    dict(cell="rnn", directions=2, packed=False, relu=True),
]


@needs_kernels
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradcheck_float64(case):
    f, inputs = _gradcheck_case(**case)
    assert torch.autograd.gradcheck(f, inputs)


def _zoneout_case(case, weights):
    """The gradcheck case's op (on CUDA) with zoneout weights bound, and its CPU twin."""
    f, inputs = _gradcheck_case(**case)
    cell, d = case["cell"], case["directions"]
    rows = inputs[0].shape[0]
    width = inputs[1].shape[2] + (inputs[2].shape[2] if cell == "lstm" else 0)
    gen = torch.Generator().manual_seed(3)
    if weights == "bernoulli":
        keep = torch.empty(d, rows, width, dtype=torch.float64).bernoulli_(0.4, generator=gen)
        keep_dev = keep.to(DEVICE)
    else:  # row stride 0 on both devices
        row = torch.rand(d, 1, width, generator=gen, dtype=torch.float64)
        keep, keep_dev = row.expand(-1, rows, -1), row.to(DEVICE).expand(-1, rows, -1)

    def run(keep_on, *tensors):
        return f(*tensors, keep=keep_on)

    return run, keep, keep_dev, inputs


@needs_kernels
@pytest.mark.parametrize("weights", ["bernoulli", "broadcast"])
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_zoneout_matches_cpu_ops_and_gradcheck(case, weights):
    # Zoneout (Note [zoneout]): the CUDA op against the CPU op, values and gradients, in
    # float64, with training-style draws and an evaluation-style broadcast row; gradcheck.
    run, keep, keep_dev, inputs = _zoneout_case(case, weights)
    got = run(keep_dev, *inputs)
    cpu_inputs = [t.detach().cpu().requires_grad_(True) for t in inputs]
    want = run(keep, *cpu_inputs)
    grads = [torch.randn_like(t) for t in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w)
    got_grads = torch.autograd.grad(got, inputs, [g.to(DEVICE) for g in grads])
    want_grads = torch.autograd.grad(want, cpu_inputs, grads)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.cpu(), w)
    assert torch.autograd.gradcheck(lambda *t: run(keep_dev, *t), inputs)


def _op_samples(dtype):
    """(op, args) for the op pair, forward and backward, on CUDA in dtype."""
    samples = []
    for case in GRADCHECK_CASES:
        _, inputs = _gradcheck_case(**case)
        inputs = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
        lstm = case["cell"] == "lstm"
        mode = case["cell"] if not case["cell"] == "rnn" else (
            "rnn_relu" if case.get("relu") else "rnn_tanh")
        x, h0, *rest = inputs
        c0, weights = (rest[0], rest[1:]) if lstm else (None, rest)
        batch_sizes = torch.tensor([3, 3, 2, 1]) if case["packed"] else None
        proj = case.get("proj", False)
        args = (mode, x, weights, True, proj, h0, c0, batch_sizes, None, True)
        samples.append((torch.ops.rnnkernels.rnn_layer.default, args))
        with torch.no_grad():
            out, h_n, c_n, ws = torch.ops.rnnkernels.rnn_layer(*args)
        # The backward op has no autograd of its own: opcheck calls it on plain tensors.
        plain = lambda t: None if t is None else t.detach()  # noqa: E731
        samples.append((torch.ops.rnnkernels.rnn_layer_backward.default,
                        (mode, plain(x), [plain(w) for w in weights], True, proj, plain(h0),
                         plain(c0), out, ws, batch_sizes, None, torch.randn_like(out),
                         torch.randn_like(h_n), torch.randn_like(c_n) if lstm else None, True)))
    return samples


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    for op, args in _op_samples(dtype):
        torch.library.opcheck(op, args)


@needs_kernels
def test_every_output_element_is_written():
    # Outputs come from the caching allocator; poisoned with NaN first, any element a
    # kernel misses stays NaN.
    for name in ("lstm_proj_2l_bi", "gru_2l_bi_bf", "rnn_tanh_2l_bi"):
        for dtype in (torch.float32, torch.bfloat16):
            ours, _, _ = make_modules(name, dtype)
            inputs = make_inputs(ours, "packed", dtype)
            poison_allocator()
            got = run(ours, inputs, DEVICE, dtype)
            for key, value in got.items():
                if key == "output_padded":
                    continue  # padding is pad_packed_sequence's
                assert torch.isfinite(value).all(), f"{name} {dtype}: {key} has non-finite elements"


# ---------------------------------------------------------------- streams, devices, flags


@needs_kernels
def test_runs_on_the_current_stream():
    ours, _, reference = make_modules("lstm_2l_bi", torch.float32)
    inputs = make_inputs(ours, "packed", torch.float32)
    expected = run(reference, inputs, "cpu", torch.float64)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs were made on the default stream
    poison_allocator(stream)  # the side stream's own blocks: what its allocations reuse
    with torch.cuda.stream(stream):
        probe = torch.empty((1 << 20) // 4 - 128, device=DEVICE)
        assert torch.isnan(probe).all(), "the side stream's allocations are not poisoned"
        del probe
    with no_tf32(), torch.cuda.stream(stream):
        # The inputs are rewritten on this stream behind a delay: kernels that ran on any
        # other stream would read them before they exist (poisoned memory: NaN).
        torch.cuda._sleep(50_000_000)
        late = {k: (v * 1 if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        got = run(ours, late, DEVICE, torch.float32)
    assert_all_close(got, expected, "on a side stream", **FP32_TOL)


@needs_kernels
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_runs_on_a_device_that_is_not_current():
    ours, _, reference = make_modules("gru_2l_bi_bf", torch.float32)
    ours = ours.to("cuda:1")
    inputs = make_inputs(ours, "dense", torch.float32)
    expected = run(reference, inputs, "cpu", torch.float64)
    with no_tf32(), torch.cuda.device(0):
        got = run(ours, inputs, "cuda:1", torch.float32)
    assert_all_close(got, expected, "on cuda:1", **FP32_TOL)


@needs_kernels
def test_matmul_tf32_flag_governs_float32():
    # Note [cuda tf32]: our float32 GEMMs follow torch.backends.cuda.matmul.allow_tf32.
    torch.manual_seed(8)
    kwargs = dict(input_size=256, hidden_size=256)
    init = torch.nn.LSTM(**kwargs)
    ours = rnnkernels.LSTM(**kwargs).to(DEVICE)
    ours.load_state_dict(init.state_dict())
    reference = torch.nn.LSTM(**kwargs).double()
    reference.load_state_dict(init.state_dict())
    x = torch.randn(20, 64, 256)
    expected, _ = reference(x.double())
    errors = {}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for allow in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = allow
            with torch.no_grad():
                got, _ = ours(x.to(DEVICE))
            errors[allow] = rel_err(got.double().cpu(), expected)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert errors[False] < 1e-5, errors          # full float32
    assert errors[True] < 1e-2, errors           # TF32 keeps 10 mantissa bits
    assert errors[True] > 10 * errors[False], errors  # and the flag was honoured


@needs_kernels
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_backward_replays_in_a_cuda_graph(cell):
    """Note [cuda step sizes by value]: forward and backward of a packed bidirectional layer
    captured in a CUDA graph replay with the batch sizes they were captured with, after
    new input values and after the pinned host memory of the capture has been handed out
    again (a per-call upload of the sizes from pinned memory would be replayed from it)."""
    torch.manual_seed(10)
    sizes = torch.tensor([5] * 70 + [3] * 20 + [2] * 9 + [1] * 6)  # > one 64-step window
    rows, gates, hidden, inputs = int(sizes.sum()), {"lstm": 4, "gru": 3}[cell], 17, 8
    make = lambda *shape: torch.randn(*shape, device=DEVICE, requires_grad=True)  # noqa: E731
    weights = [make(*shape) for _ in range(2)
               for shape in ((gates * hidden, inputs), (gates * hidden, hidden), (gates * hidden,),
                             (gates * hidden,))]
    h0 = make(2, 5, hidden)
    c0 = make(2, 5, hidden) if cell == "lstm" else None
    x = make(rows, inputs)
    upstream = torch.randn(rows, 2 * hidden, device=DEVICE)
    leaves = [x, h0, *weights] + ([c0] if cell == "lstm" else [])

    def step():
        out = ops.rnn_layer(cell, x, weights, True, False, h0, c0, sizes, None, True)[0]
        return torch.autograd.grad(out, leaves, upstream)

    with no_tf32():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture, as torch.cuda.graph asks
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        reused = [torch.full((1 << 14,), -1, dtype=torch.int64).pin_memory() for _ in range(64)]
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        expected = step()
    del reused
    for k, (got, want) in enumerate(zip(captured, expected)):
        torch.testing.assert_close(got, want, msg=lambda m, k=k: f"gradient {k}: {m}")


# ---------------------------------------------------------------- size


@needs_kernels
@pytest.mark.slow
def test_offsets_beyond_32_bits():
    # N * H = 4200 * 512 * 1024 > 2**31 elements: the x_proj / output row offsets and the
    # previous-hidden gather of the weight gradient index past 32 bits. Compared with cuDNN
    # in float32 (TF32 off) by relative norm error; the weight gradients sum 2.1M rows.
    steps, batch, hidden, inputs = 4200, 512, 1024, 16
    assert steps * batch * hidden > 2**31
    torch.manual_seed(9)
    ours = rnnkernels.RNN(inputs, hidden).to(DEVICE)
    cudnn = torch.nn.RNN(inputs, hidden).to(DEVICE)
    cudnn.load_state_dict(ours.state_dict())
    x = torch.randn(steps, batch, inputs, device=DEVICE)
    results = []
    with no_tf32():
        for module in (ours, cudnn):
            xi = x.clone().requires_grad_(True)
            out, h_n = module(xi)
            ends = torch.cat([out[:2], out[-2:]]).detach().clone()
            out.sum().backward()
            results.append({"output_ends": ends, "h_n": h_n.detach(), "grad_x": xi.grad,
                            **{n: p.grad.clone() for n, p in module.named_parameters()}})
            module.zero_grad(set_to_none=True)
            del out, xi, h_n
            torch.cuda.empty_cache()
    got, expected = results
    for key in expected:
        err = rel_err(got[key].double(), expected[key].double())
        assert err < 1e-4, f"{key}: relative error {err:.3e} against cuDNN"


# ---------------------------------------------------------------- layer-normalised LSTM

# rnn_layer in mode ln_lstm on CUDA (autograd: rnn_layer_backward) against
# rnnkernels.reference.lstm(..., layer_norm=...) in float64 on the CPU, for the same
# (dtype-rounded) weights: the host's input side x_side = LN_ih(x W_ih^T) + b_ih + b_hh
# (Note [layer-normalised LSTM]) and the recurrence, values and every gradient.
LN_GPU_CASES = [
    dict(directions=1, packed=False, hidden=17, bias=True),
    dict(directions=2, packed=True, hidden=17, bias=True),
    dict(directions=2, packed=False, hidden=5, bias=False),
]


def _ln_case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def _ln_leaves(directions, hidden, bias, seed=11, batch=3, steps=4, packed=False):
    """float64 CPU leaves of one layer: x [N, I] rows, per direction the weights and LN
    parameters, h0, c0; and batch_sizes (always, for the reference)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [3, 3, 2, 1] if packed else [batch] * steps
    four_h, n = 4 * hidden, sum(sizes)
    rnd = lambda *s, scale=0.5: scale * torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    gamma = lambda k: 1 + 0.3 * torch.randn(k, generator=gen, dtype=torch.float64)  # noqa: E731
    dirs = [dict(w_ih=rnd(four_h, I), w_hh=rnd(four_h, hidden),
                 b_ih=rnd(four_h) if bias else None, b_hh=rnd(four_h) if bias else None,
                 ln_ih=gamma(four_h), ln_hh=gamma(four_h), ln_c_weight=gamma(hidden),
                 ln_c_bias=rnd(hidden) if bias else None) for _ in range(directions)]
    return dict(x=rnd(n, I, scale=1.0), dirs=dirs, h0=rnd(directions, sizes[0], hidden),
                c0=rnd(directions, sizes[0], hidden), batch_sizes=torch.tensor(sizes),
                packed=packed, bias=bias)


def _ln_flat(leaves):
    """Every leaf tensor in a fixed order (x, h0, c0, then per direction)."""
    names = ("w_ih", "w_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_c_weight", "ln_c_bias")
    return [leaves["x"], leaves["h0"], leaves["c0"]] + [
        p[k] for p in leaves["dirs"] for k in names if p[k] is not None]


def _ln_run_op(leaves, device, dtype):
    """Forward + backward of the op with fixed upstream gradients; outputs and the gradient
    of every leaf, as float64 CPU tensors."""
    flat = [t.detach().to(device, dtype).requires_grad_(True) for t in _ln_flat(leaves)]
    x, h0, c0, weights = flat[0], flat[1], flat[2], flat[3:]
    out, h_n, c_n, _ = ops.rnn_layer("ln_lstm", x, weights, leaves["bias"], False, h0, c0,
                                     leaves["batch_sizes"] if leaves["packed"] else None, None,
                                     True)
    return _ln_loss_and_grads((out, h_n, c_n), flat, dtype)


def _ln_run_reference(leaves):
    from rnnkernels import reference

    flat = [t.detach().clone().requires_grad_(True) for t in _ln_flat(leaves)]
    x, h0, c0, rest = flat[0], flat[1], flat[2], iter(flat[3:])
    params, layer_norm = [], []
    for p in leaves["dirs"]:
        d = {k: (next(rest) if p[k] is not None else None) for k in p}
        params += [d["w_ih"], d["w_hh"]] + ([d["b_ih"], d["b_hh"]] if leaves["bias"] else [])
        layer_norm += [d["ln_ih"], d["ln_hh"], d["ln_c_weight"]] + (
            [d["ln_c_bias"]] if leaves["bias"] else [])
    outputs = reference.lstm(x, (h0, c0), params, leaves["bias"], 1, 0.0, False,
                             len(leaves["dirs"]) == 2, batch_sizes=leaves["batch_sizes"],
                             layer_norm=layer_norm)
    return _ln_loss_and_grads(outputs, flat, torch.float64)


def _ln_loss_and_grads(outputs, flat, dtype):
    gen = torch.Generator().manual_seed(5)
    upstream = [torch.randn(t.shape, generator=gen).to(dtype).to(t.device) for t in outputs]
    grads = torch.autograd.grad(outputs, flat, upstream)
    names = ["output", "h_n", "c_n"] + [f"grad_{k}" for k in range(len(flat))]
    return {n: t.detach().double().cpu() for n, t in zip(names, list(outputs) + list(grads))}


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", LN_GPU_CASES, ids=_ln_case_id)
def test_layer_norm_lstm_matches_float64_reference(case, dtype):
    leaves = _ln_leaves(case["directions"], case["hidden"], case["bias"], packed=case["packed"])
    with no_tf32():
        ours = _ln_run_op(leaves, DEVICE, dtype)
    want = _ln_run_reference(leaves)
    assert_all_close(ours, want, f"layer-norm LSTM {dtype}",
                     **(FP64_TOL if dtype == torch.float64 else FP32_TOL))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", LN_GPU_CASES, ids=_ln_case_id)
def test_layer_norm_lstm_low_precision_matches_float64_op(case, dtype):
    # No torch.nn module exists to measure torch's own error in dtype. As the emulation test
    # of tests/test_cuda_compile.py: the op pair's outputs and gradients in dtype against
    # the float64 op pair (checked against the reference above) on the same rounded inputs,
    # within a few units of roundoff (fp32 math, 16-bit storage of h and the gradients).
    unit_roundoff = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    leaves = _ln_leaves(case["directions"], case["hidden"], case["bias"], seed=17,
                        packed=case["packed"])
    batch_sizes = leaves["batch_sizes"] if case["packed"] else None
    flat = [t.to(DEVICE, dtype) for t in _ln_flat(leaves)]
    d, rows, batch = case["directions"], flat[0].shape[0], flat[1].shape[1]
    gen = torch.Generator().manual_seed(19)
    upstream = [torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
                for shape in ((rows, d * case["hidden"]), (d, batch, case["hidden"]),
                              (d, batch, case["hidden"]))]

    def forward_backward(flat, grads):
        x, h0, c0, weights = flat[0], flat[1], flat[2], flat[3:]
        args = ("ln_lstm", x, weights, case["bias"], False, h0, c0)
        out, h_n, c_n, ws = torch.ops.rnnkernels.rnn_layer(*args, batch_sizes, None, True)
        grad_x, grad_w, grad_h0, grad_c0 = torch.ops.rnnkernels.rnn_layer_backward(
            *args, out, ws, batch_sizes, None, *grads, True)
        return [out, h_n, c_n, grad_x, *grad_w, grad_h0, grad_c0], ws

    got, ws = forward_backward(flat, upstream)
    want, _ = forward_backward([t.double() for t in flat], [g.double() for g in upstream])
    assert ws.dtype == torch.float32 and all(t.dtype == dtype for t in got)
    for k, (g, w) in enumerate(zip(got, want)):
        err = rel_err(g.double().cpu(), w.cpu())
        assert err < 8 * unit_roundoff, f"output {k}: relative error {err:.2e}"


@needs_kernels
@pytest.mark.parametrize("case", LN_GPU_CASES, ids=_ln_case_id)
def test_layer_norm_lstm_gradcheck_float64(case):
    leaves = _ln_leaves(case["directions"], 3, case["bias"], seed=13, packed=case["packed"])
    batch_sizes = leaves["batch_sizes"] if case["packed"] else None
    flat = [t.to(DEVICE).requires_grad_(True) for t in _ln_flat(leaves)]

    def f(x, h0, c0, *weights):
        out, h_n, c_n, _ = ops.rnn_layer("ln_lstm", x, list(weights), case["bias"], False, h0,
                                         c0, batch_sizes, None, True)
        return out, h_n, c_n

    assert torch.autograd.gradcheck(f, tuple(flat))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_norm_lstm_autocast(dtype):
    # Note [autocast] (rnnkernels/functional.py): on CUDA every result is in the autocast
    # dtype, as for torch.nn's cuDNN RNNs; the parameters stay float32.
    torch.manual_seed(12)
    module = rnnkernels.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True).to(DEVICE)
    x = torch.randn(T, B, I, device=DEVICE, requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        out, (h_n, c_n) = module(x)
    assert out.dtype == h_n.dtype == c_n.dtype == dtype
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())
