"""int8 inference (rnnkernels.quantized; Note [int8 inference] in csrc/cpu/int8_isa.h).

Accuracy against a float64 simulation of exactly our scheme (rnnkernels.reference
.quantized_run_layer) and against torch.nn float32, where our error must not exceed torch's
own dynamic int8 error on the same model and input; the API (quantize_dynamic, dequantize,
torch.ao's mapping, state_dict, repr, no backward, no training mode) and bad input. The
simulation tests run again in a child process per int8 kernel path this CPU can run
(test_int8_kernel_paths)."""

import copy
import io
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from child_pytest import assert_child_passes, best_cpu_capability
from rnnkernels import reference as R
from rnnkernels.quantized import (QuantizedGRU, QuantizedGRUCell, QuantizedLSTM,
                                  QuantizedLSTMCell, QuantizedRNN, QuantizedRNNCell)

TESTS = Path(__file__).resolve().parent

# ---------------------------------------------------------------- the float64 simulation


def _direction_weights(q, suffix: str, lstm: bool, proj: bool) -> dict:
    def pair(name):
        return getattr(q, name + suffix), getattr(q, name + suffix + "_scale")

    bias = (lambda name: getattr(q, name + suffix).double()) if q.bias else (lambda name: None)
    return dict(w_ih=pair("weight_ih"), w_hh=pair("weight_hh"),
                w_hr=pair("weight_hr") if lstm and proj else None,
                b_ih=bias("bias_ih"), b_hh=bias("bias_hh"))


def simulate(q, x_rows: torch.Tensor, batch_sizes: list[int], h0, c0):
    """The int8 module q on rows [N, I] (PackedSequence order) in float64: (out, h_n, c_n)."""
    lstm = isinstance(q, QuantizedLSTM)
    cell = "lstm" if lstm else "gru" if isinstance(q, QuantizedGRU) else "rnn"
    directions = 2 if q.bidirectional else 1
    rows, h_n, c_n = x_rows.double(), [], []
    for layer in range(q.num_layers):
        dirs = [_direction_weights(q, f"_l{layer}" + ("_reverse" if d else ""), lstm,
                                   lstm and q.proj_size > 0) for d in range(directions)]
        span = slice(layer * directions, (layer + 1) * directions)
        rows, h, c = R.quantized_run_layer(cell, rows, dirs, h0[span].double(),
                                           c0[span].double() if lstm else None, batch_sizes,
                                           nonlinearity=getattr(q, "nonlinearity", "tanh"))
        h_n.append(h)
        c_n.append(c)
    return rows, torch.cat(h_n), (torch.cat(c_n) if lstm else None)


def assert_matches_simulation(actual: torch.Tensor, simulated: torch.Tensor, what: str):
    """Within float32 rounding of the simulation: the median difference at 1e-6 (a wrong
    scale, rounding or granularity moves it to 1e-4 and more: test_simulation_tolerance_
    catches_a_wrong_scheme), the largest at 1e-3, the effect of one element of h landing on
    the other side of a rounding boundary in float32 than in float64 (seen: 4.7e-4)."""
    diff = (actual.double() - simulated).abs().flatten()
    assert torch.isfinite(diff).all(), f"{what}: non-finite differences"
    median, largest = diff.median().item(), diff.max().item()
    assert median <= 1e-6 and largest <= 1e-3, \
        f"{what}: median difference {median:.2e} (<= 1e-6), largest {largest:.2e} (<= 1e-3)"


LAYER_CASES = {
    "lstm": (nn.LSTM, {}),
    "lstm_proj_bi_2layers": (nn.LSTM, dict(proj_size=7, num_layers=2, bidirectional=True)),
    "lstm_nobias": (nn.LSTM, dict(bias=False)),
    "gru": (nn.GRU, {}),
    "gru_bi_2layers": (nn.GRU, dict(num_layers=2, bidirectional=True)),
    "rnn_tanh": (nn.RNN, {}),
    "rnn_relu_bi": (nn.RNN, dict(nonlinearity="relu", bidirectional=True)),
}


def _states(m, batch, gen, scale=0.5):
    directions = 2 if m.bidirectional else 1
    out_size = getattr(m, "proj_size", 0) or m.hidden_size
    h0 = torch.randn(m.num_layers * directions, batch, out_size, generator=gen) * scale
    if isinstance(m, nn.LSTM):
        return h0, torch.randn(m.num_layers * directions, batch, m.hidden_size, generator=gen)
    return h0


@pytest.mark.parametrize("batch", [3, 12], ids=["B3", "B12_row_split"])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_simulation_layers(case, batch):
    """I = 33, H = 21: tails at every vector width; B = 12 lets two threads split the batch."""
    cls, kwargs = LAYER_CASES[case]
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    m = cls(33, 21, **kwargs).eval()
    q = rnnkernels.quantize_dynamic(m)
    x = torch.randn(6, batch, 33, generator=gen)
    hx = _states(m, batch, gen)
    out, hidden = q(x, hx)
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
    sim_out, sim_h, sim_c = simulate(q, x.reshape(-1, 33), [batch] * 6, h0, c0)
    assert_matches_simulation(out.reshape(-1, out.shape[-1]), sim_out, f"{case} output")
    assert_matches_simulation(hidden[0] if c0 is not None else hidden, sim_h, f"{case} h_n")
    if c0 is not None:
        assert_matches_simulation(hidden[1], sim_c, f"{case} c_n")


@pytest.mark.parametrize("case", ["lstm_proj_bi_2layers", "gru_bi_2layers", "rnn_relu_bi"])
def test_simulation_packed_unsorted_and_batch_first(case):
    cls, kwargs = LAYER_CASES[case]
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    m = cls(10, 19, batch_first=True, **kwargs).eval()
    q = rnnkernels.quantize_dynamic(m)
    lengths = torch.tensor([4, 7, 2, 7, 5, 1, 6, 3, 7, 2])
    x = torch.randn(10, 7, 10, generator=gen)
    hx = _states(m, 10, gen)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, hidden = q(packed, hx)
    order = packed.sorted_indices
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
    sim_out, sim_h, sim_c = simulate(q, packed.data, packed.batch_sizes.tolist(),
                                     h0[:, order], None if c0 is None else c0[:, order])
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert_matches_simulation(out.data, sim_out, f"{case} packed output")
    h_n = hidden[0] if c0 is not None else hidden
    assert_matches_simulation(h_n[:, order], sim_h, f"{case} packed h_n")
    # batch_first dense input: the same sequences, each alone, through the module.
    padded, _ = pad_packed_sequence(out, batch_first=True)
    for b in (1, 5):
        single_hx = tuple(s[:, b:b + 1] for s in hx) if c0 is not None else hx[:, b:b + 1]
        alone, _ = q(x[b:b + 1, :lengths[b]], single_hx)
        torch.testing.assert_close(alone[0], padded[b, :lengths[b]], rtol=0, atol=0)


CELL_CASES = {"lstm_cell": nn.LSTMCell, "gru_cell": nn.GRUCell, "rnn_cell": nn.RNNCell}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_simulation_cells_and_unbatched(case):
    cls = CELL_CASES[case]
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    m = cls(17, 23).eval()
    q = rnnkernels.quantize_dynamic(m)
    x = torch.randn(9, 17, generator=gen)
    h = torch.randn(9, 23, generator=gen) * 0.5
    c = torch.randn(9, 23, generator=gen)
    lstm = cls is nn.LSTMCell
    got = q(x, (h, c)) if lstm else q(x, h)
    kind = {"lstm_cell": "lstm", "gru_cell": "gru", "rnn_cell": "rnn"}[case]
    w = dict(w_ih=(q.weight_ih, q.weight_ih_scale), w_hh=(q.weight_hh, q.weight_hh_scale),
             w_hr=None, b_ih=q.bias_ih.double(), b_hh=q.bias_hh.double())
    _, sim_h, sim_c = R.quantized_run_layer(kind, x.double(), [w], h[None].double(),
                                            c[None].double() if lstm else None, [9])
    assert_matches_simulation(got[0] if lstm else got, sim_h[0], f"{case} h'")
    if lstm:
        assert_matches_simulation(got[1], sim_c[0], f"{case} c'")
    one = q(x[2], (h[2], c[2])) if lstm else q(x[2], h[2])
    torch.testing.assert_close(one[0] if lstm else one, (got[0] if lstm else got)[2], rtol=0,
                               atol=0)


def test_simulation_tolerance_catches_a_wrong_scheme(monkeypatch):
    """The simulation test's tolerance rejects schemes that differ from ours only in a
    detail: truncating instead of rounding, scaling to 128 instead of 127, one scale per
    tensor instead of per row. Each is run as the simulation against our kernels."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = nn.GRU(40, 53).eval()
    q = rnnkernels.quantize_dynamic(m)
    x = torch.randn(9, 12, 40, generator=gen)
    h0 = torch.randn(1, 12, 53, generator=gen) * 0.5
    out, _ = q(x, h0)
    exact = R.quantize_rows

    def rows_with(round_fn, levels, per_tensor=False):
        def quantize(a):
            peak = a.abs().amax() if per_tensor else a.abs().amax(dim=1, keepdim=True)
            peak = peak.expand(a.shape[0], 1) if per_tensor else peak
            divisor = torch.where(peak > 0, peak, torch.ones_like(peak))
            return round_fn(a * levels / divisor).clamp(-127, 127), peak / levels
        return quantize

    wrong = {"truncation": rows_with(torch.trunc, 127), "scale to 128": rows_with(torch.round, 128),
             "per tensor": rows_with(torch.round, 127, per_tensor=True)}
    for name, quantize in wrong.items():
        monkeypatch.setattr(R, "quantize_rows", quantize)
        sim_out, _, _ = simulate(q, x.reshape(-1, 40), [12] * 9, h0, None)
        with pytest.raises(AssertionError, match="median difference"):
            assert_matches_simulation(out.reshape(-1, 53), sim_out, name)
    monkeypatch.setattr(R, "quantize_rows", exact)
    sim_out, _, _ = simulate(q, x.reshape(-1, 40), [12] * 9, h0, None)
    assert_matches_simulation(out.reshape(-1, 53), sim_out, "our scheme")


def test_weights_are_quantized_per_output_row():
    """The stored int8 weights and scales against a float64 computation of the scheme."""
    torch.manual_seed(1)
    m = nn.LSTM(13, 9, proj_size=4).eval()
    q = rnnkernels.quantize_dynamic(m)
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_hr_l0"):
        w = getattr(m, name).detach().double()
        scale = w.abs().amax(dim=1) / 127
        expected = torch.round(w / scale[:, None]).clamp(-127, 127)
        assert getattr(q, name).dtype == torch.int8
        torch.testing.assert_close(getattr(q, name + "_scale").double(), scale, rtol=1e-7, atol=0)
        assert torch.equal(getattr(q, name).double(), expected), name


# ---------------------------------------------------------------- against float32


def _torch_dynamic(m: nn.Module) -> nn.Module:
    holder = nn.Sequential(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(holder, {type(m)}, dtype=torch.qint8)[0]


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell", "gru_cell", "rnn_cell"])
@pytest.mark.parametrize("seed", [0, 1])
def test_error_against_float32_at_most_torch_dynamic_int8(kind, seed):
    """Same model, same input: max |ours - float32| <= max |torch's dynamic int8 - float32|
    (torch has no dynamic int8 RNN layer, so the RNN is checked against the simulation
    only). H = 256, T = 50, B = 16; the cells one step at B = 16."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "lstm_cell": nn.LSTMCell, "gru_cell": nn.GRUCell,
           "rnn_cell": nn.RNNCell}[kind]
    m = cls(128, 256).eval()
    theirs = _torch_dynamic(copy.deepcopy(m))
    assert type(theirs) is not cls, "torch.ao did not quantize the module"
    ours = rnnkernels.quantize_dynamic(m)
    x = torch.randn(50, 16, 128, generator=gen) if not kind.endswith("cell") else \
        torch.randn(16, 128, generator=gen)
    with torch.no_grad():
        def first(y):
            return y[0] if isinstance(y, tuple) else y
        expected, got, torch_int8 = first(m(x)), first(ours(x)), first(theirs(x))
    our_error = (got - expected).abs().max().item()
    torch_error = (torch_int8 - expected).abs().max().item()
    assert our_error <= torch_error, f"ours {our_error:.3e} > torch dynamic int8 {torch_error:.3e}"
    assert our_error > 0  # it is int8, not the float32 kernels


# ---------------------------------------------------------------- API


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.lstm = rnnkernels.LSTM(8, 6, batch_first=True)
        self.inner = nn.ModuleDict({"gru": nn.GRU(6, 6), "cell": nn.RNNCell(6, 4)})

    def forward(self, x):
        y, _ = self.lstm(self.embed(x))
        y, _ = self.inner["gru"](y)
        return self.inner["cell"](y[:, -1])


def test_quantize_dynamic_swaps_ours_and_torch_nn_modules_and_back():
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(3, 4, 5)
    q = rnnkernels.quantize_dynamic(model)
    assert type(q.lstm) is QuantizedLSTM and type(q.inner["gru"]) is QuantizedGRU
    assert type(q.inner["cell"]) is QuantizedRNNCell and type(q.embed) is nn.Linear
    assert type(model.lstm) is rnnkernels.LSTM  # not in place
    with torch.no_grad():
        error = (q(x) - model(x)).abs().max().item()
    assert 0 < error < 0.05
    back = rnnkernels.dequantize(q)
    assert type(back.lstm) is rnnkernels.LSTM and type(back.inner["cell"]) is rnnkernels.RNNCell
    w = q.lstm.weight_hh_l0.float() * q.lstm.weight_hh_l0_scale[:, None]
    torch.testing.assert_close(back.lstm.weight_hh_l0.detach(), w, rtol=0, atol=0)
    back.train()
    back(x).sum().backward()  # float modules again: trainable
    assert back.lstm.weight_ih_l0.grad is not None
    assert type(rnnkernels.quantize_dynamic(nn.LSTM(3, 4))) is QuantizedLSTM


def test_torch_ao_quantize_dynamic_maps_to_our_modules():
    torch.manual_seed(0)
    model = Model().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {rnnkernels.LSTM, nn.GRU}, dtype=torch.qint8)
        theirs = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.LSTM},
                                                        dtype=torch.qint8)
    assert type(ours.lstm) is QuantizedLSTM
    # nn.GRU is torch's own dynamic module (its mapping), ours only for our classes.
    assert type(ours.inner["gru"]).__module__.startswith("torch.ao")
    # What the README warns about: {nn.LSTM} matches by exact type and leaves ours in float32.
    assert type(theirs.lstm) is rnnkernels.LSTM
    with torch.no_grad():
        x = torch.randn(2, 3, 5)
        assert torch.isfinite(ours(x)).all()


def test_state_dict_round_trip_and_repr():
    torch.manual_seed(0)
    m = nn.LSTM(9, 12, num_layers=2, proj_size=5, bidirectional=True)
    q = rnnkernels.quantize_dynamic(m)
    sd = q.state_dict()
    for name in m.state_dict():
        assert name in sd
        if name.startswith("weight"):
            assert sd[name].dtype == torch.int8 and sd[name + "_scale"].dtype == torch.float32
        else:
            assert sd[name].dtype == torch.float32
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    other = rnnkernels.quantize_dynamic(nn.LSTM(9, 12, num_layers=2, proj_size=5,
                                                bidirectional=True))
    x = torch.randn(4, 3, 9)
    assert not torch.equal(other(x)[0], q(x)[0])
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other(x)[0], q(x)[0])  # the packed panels follow the loaded weights
    text = repr(q)
    assert text.startswith("QuantizedLSTM(9, 12") and "int8" in text and "proj_size=5" in text
    clone = copy.deepcopy(q)
    assert torch.equal(clone(x)[0], q(x)[0])


def test_backward_and_training_mode_are_refused():
    torch.manual_seed(0)
    q = rnnkernels.quantize_dynamic(nn.GRU(4, 5))
    x = torch.randn(3, 2, 4, requires_grad=True)
    out, h = q(x)
    with pytest.raises(RuntimeError, match="int8 inference module and has no backward"):
        out.sum().backward()
    cell = rnnkernels.quantize_dynamic(nn.LSTMCell(4, 5))
    with pytest.raises(RuntimeError, match="no backward"):
        cell(x[0])[1].sum().backward()
    before = copy.deepcopy(q.state_dict())
    q.train()
    with pytest.raises(RuntimeError, match=r"call \.eval\(\)"):
        q(x)
    q.eval()
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    assert torch.equal(q(x)[0], out)


def test_bad_input_raises_like_torch_nn_and_leaves_the_module_usable():
    torch.manual_seed(0)
    m = nn.LSTM(4, 5)
    q = rnnkernels.quantize_dynamic(m)
    x = torch.randn(3, 2, 4)
    good = q(x)[0]
    before = copy.deepcopy(q.state_dict())
    with pytest.raises((ValueError, RuntimeError), match="float32.*float64|float64"):
        q(x.double())
    with pytest.raises((ValueError, RuntimeError), match="float32"):
        q(x.bfloat16())
    packed = pack_padded_sequence(x.double(), torch.tensor([3, 2]))
    with pytest.raises((ValueError, RuntimeError), match="float64"):
        q(packed)
    # The errors torch.nn raises for these, and of the same type.
    for bad in (torch.randn(3, 2, 7), torch.randn(3, 2, 4, 1)):
        with pytest.raises(Exception) as theirs:
            m(bad)
        with pytest.raises(type(theirs.value)):
            q(bad)
    with pytest.raises(RuntimeError, match="Expected hidden"):
        q(x, (torch.zeros(1, 3, 5), torch.zeros(1, 2, 5)))
    with pytest.raises((ValueError, RuntimeError), match="float32"):
        q(x, (torch.zeros(1, 2, 5, dtype=torch.float64), torch.zeros(1, 2, 5)))
    cell = rnnkernels.quantize_dynamic(nn.GRUCell(4, 5))
    with pytest.raises((ValueError, RuntimeError), match="float64"):
        cell(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="input_size"):
        cell(torch.randn(2, 3))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    assert torch.equal(q(x)[0], good)


def test_empty_batch_gives_empty_outputs_as_torch_nn():
    for m, x in ((nn.LSTM(4, 5), torch.randn(3, 0, 4)), (nn.GRU(4, 5, bidirectional=True),
                                                         torch.randn(3, 0, 4)),
                 (nn.GRUCell(4, 5), torch.randn(0, 4)), (nn.LSTMCell(4, 5), torch.randn(0, 4))):
        q = rnnkernels.quantize_dynamic(m)
        expected, got = m(x), q(x)
        for e, g in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,)):
            e, g = (e if isinstance(e, torch.Tensor) else e[0]), (g if isinstance(g, torch.Tensor) else g[0])
            assert g.shape == e.shape and g.dtype == e.dtype, type(m).__name__


def test_non_finite_values():
    """NaN or inf in a row of the input gives NaN in what depends on it (not a finite
    wrong number); a weight with NaN is refused when quantizing."""
    torch.manual_seed(0)
    q = rnnkernels.quantize_dynamic(nn.GRU(4, 5))
    x = torch.randn(3, 2, 4)
    x[1, 0, 2] = float("nan")
    x[2, 1, 0] = float("inf")
    out, _ = q(x)
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1:, 0]).all() and torch.isfinite(out[1, 1]).all()
    assert torch.isnan(out[2, 1]).all()
    bad = nn.GRU(4, 5)
    with torch.no_grad():
        bad.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight_hh_l0.*NaN"):
        rnnkernels.quantize_dynamic(bad)


def test_tracing_and_scripting_are_refused():
    """The kernels are opaque to TorchScript and the tracer: a trace would hold constants."""
    q = rnnkernels.quantize_dynamic(nn.LSTM(4, 5))
    x = torch.randn(3, 2, 4)
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(q, (x,))
    with pytest.raises(RuntimeError, match="cannot be scripted"):
        torch.jit.script(q)
    assert torch.isfinite(q(x)[0]).all()


def test_torch_compile_runs_the_int8_kernels():
    """Dynamo cannot trace into the kernels (a graph break), so the compiled module runs
    them eagerly: the same values, for new shapes too."""
    torch.manual_seed(0)
    q = rnnkernels.quantize_dynamic(nn.GRU(8, 16))
    compiled = torch.compile(q)
    for shape in ((5, 3, 8), (7, 2, 8)):
        x = torch.randn(shape)
        assert torch.equal(compiled(x)[0], q(x)[0])


def test_features_without_int8_kernels_are_refused():
    for m in (rnnkernels.LSTM(4, 5, zoneout_h=0.1), rnnkernels.LSTM(4, 5, layer_norm=True),
              rnnkernels.GRU(4, 5, recurrent_dropconnect=0.2)):
        with pytest.raises(ValueError, match="no int8 kernel"):
            rnnkernels.quantize_dynamic(m)
    model = nn.Sequential(rnnkernels.LSTM(4, 5, layer_norm=True), nn.Linear(5, 2))
    kept = rnnkernels.quantize_dynamic(model, skip=[model[0]])
    assert type(kept[0]) is rnnkernels.LSTM


# ---------------------------------------------------------------- every kernel path

PATHS = {  # name -> (environment, the int8 kernels expected, CPU flags needed, ISA needed)
    "avx512_vnni": ({}, "avx512_vnni", ("avx512_vnni",), "avx512"),
    "avx512": ({"RNNKERNELS_INT8_NO_VNNI": "1"}, "avx512", (), "avx512"),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, "avx2", (), "avx2"),
    "default": ({"ATEN_CPU_CAPABILITY": "default"}, "default", (), "default"),
}
_RANK = {"default": 0, "avx2": 1, "avx512": 2}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.mark.parametrize("path", list(PATHS))
def test_int8_kernel_paths(path):
    """The simulation tests in a child process per int8 kernel path, forced as the float32
    ISA tests force theirs (tests/test_isa_paths.py)."""
    env, expected, flags, isa = PATHS[path]
    built = rnnkernels.build_info()["cpu_isas"]
    if isa not in built or (expected == "avx512_vnni" and expected not in built):
        pytest.skip(f"this build has no {expected} kernels (built: {built})")
    best = best_cpu_capability()
    if _RANK.get(best, 0) < _RANK[isa]:
        pytest.skip(f"this CPU runs at most {best}, not {isa}")
    missing = [f for f in flags if f not in _cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {missing}")
    assert_child_passes(TESTS / "test_quantized.py", {**env, "RNNKERNELS_EXPECTED_INT8": expected},
                        path, select="simulation or expected_int8")


def test_expected_int8_kernels_are_active():
    expected = os.environ.get("RNNKERNELS_EXPECTED_INT8")
    if expected is None:
        expected = "avx512_vnni" if "avx512_vnni" in _cpu_flags() and \
            rnnkernels._C.cpu_capability() == "avx512" else None
        if expected is None:
            assert rnnkernels.quantized.int8_kernels() in ("avx512", "avx2", "default")
            return
    assert rnnkernels.quantized.int8_kernels() == expected
