"""The CPU engine choice (Note [engine choice] in rnnkernels/backends.py): settings, the
table's nearest-row rule, the one-time autotune, and torch's engine giving torch.nn's
results bit for bit. The rest of the suite pins engine="rnnkernels" (conftest.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels import backends, engine_seed, engine_table
from rnnkernels.backends import EngineKey, cpu
from rnnkernels.bench.workload import engine_from_op_names


@pytest.fixture(autouse=True)
def _fresh_backend():
    saved = cpu.engine, cpu.benchmark
    cpu.engine, cpu.benchmark = "auto", False  # what a user gets (the suite pins rnnkernels)
    cpu.reset()
    yield
    cpu.engine, cpu.benchmark = saved
    cpu.reset()


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def _pair(cls, *args, **kwargs):
    ours = getattr(rnnkernels, cls)(*args, **kwargs)
    ref = getattr(torch.nn, cls)(*args, **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _grads(module, outputs, inputs):
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs)
    return torch.autograd.grad(loss, [*inputs, *module.parameters()])


def _tensors(result):
    if isinstance(result, torch.nn.utils.rnn.PackedSequence):
        return [result.data]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _tensors(r)]
    return [result]


LAYER_CASES = [
    ("LSTM", dict(input_size=5, hidden_size=7)),
    ("LSTM", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, batch_first=True)),
    ("LSTM", dict(input_size=5, hidden_size=7, proj_size=3)),
    ("GRU", dict(input_size=5, hidden_size=7, num_layers=2, bias=False)),
    ("RNN", dict(input_size=5, hidden_size=7, nonlinearity="relu", bidirectional=True)),
    ("RNN", dict(input_size=5, hidden_size=7)),
]


@pytest.mark.parametrize("cls,kwargs", LAYER_CASES)
@pytest.mark.parametrize("form", ["dense", "packed", "unbatched"])
def test_torch_engine_is_torch_nn_bit_for_bit(cls, kwargs, form):
    ours, ref = _pair(cls, **kwargs)
    batch_first = kwargs.get("batch_first", False)
    x = torch.randn(4, 6, 5) if form != "unbatched" else torch.randn(6, 5)
    if form == "packed":
        x = pack_padded_sequence(x if batch_first else x, torch.tensor([6, 3, 5, 1][:x.shape[0]])
                                 if batch_first else torch.tensor([4, 4, 2, 1, 1, 3]),
                                 batch_first=batch_first, enforce_sorted=False)
        leaf = x.data.requires_grad_()
    else:
        leaf = x.requires_grad_()
    cpu.engine = "torch"
    got = ours(x)
    assert cpu.last_engine["engine"] == "torch"
    assert "rnnkernels::" not in " ".join(_ops_run(lambda: ours(x)))
    want = ref(x)
    for g, w in zip(_tensors(got), _tensors(want)):
        assert torch.equal(g, w)
    for g, w in zip(_grads(ours, _tensors(got), [leaf]), _grads(ref, _tensors(want), [leaf])):
        assert torch.equal(g, w)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_torch_engine_cells_are_torch_nn_bit_for_bit(cls, bias, with_state):
    ours, ref = _pair(cls, 5, 7, bias=bias)
    x = torch.randn(3, 5, requires_grad=True)
    state = None
    if with_state:
        h = torch.randn(3, 7)
        state = (h, torch.randn(3, 7)) if cls == "LSTMCell" else h
    cpu.engine = "torch"
    got, want = _tensors(ours(x, state)), _tensors(ref(x, state))
    assert cpu.last_engine["engine"] == "torch" and cpu.last_engine["key"].cell == cls[:-4].lower() + "_cell"
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    for g, w in zip(_grads(ours, got, [x]), _grads(ref, want, [x])):
        assert torch.equal(g, w)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_torch_engine_under_autocast_is_torch_nn_bit_for_bit(cls):
    ours, ref = _pair(cls, 8, 16)
    x = torch.randn(5, 3, 8) if not cls.endswith("Cell") else torch.randn(3, 8)
    cpu.engine = "torch"
    with torch.autocast("cpu", torch.bfloat16):
        got, want = _tensors(ours(x)), _tensors(ref(x))
    assert cpu.last_engine["key"].dtype == "autocast_bfloat16"
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)


def test_rnnkernels_engine_runs_our_ops():
    ours, _ = _pair("GRU", 5, 7)
    x = torch.randn(4, 2, 5)
    cpu.engine = "rnnkernels"
    assert any(name.startswith("rnnkernels::") for name in _ops_run(lambda: ours(x)))
    cpu.engine = "torch"
    assert not any(name.startswith("rnnkernels::") for name in _ops_run(lambda: ours(x)))


def test_options_torch_lacks_keep_our_route():
    """zoneout and the layer-normalised LSTM have no torch engine: engine="torch" leaves
    them to rnnkernels, with the same results as engine="rnnkernels"."""
    for module in (rnnkernels.LSTM(5, 7, zoneout_h=0.3).eval(), rnnkernels.GRU(5, 7, zoneout_h=0.2).eval(),
                   rnnkernels.LSTM(5, 7, layer_norm=True)):
        x = torch.randn(4, 2, 5)
        with cpu.flags(engine="rnnkernels"):
            want = _tensors(module(x))
        cpu.reset()
        with cpu.flags(engine="torch"):
            got = _tensors(module(x))
            assert cpu.last_engine is None  # not routed
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_engine_setting_is_validated_and_flags_restore():
    with pytest.raises(ValueError, match="expected one of"):
        cpu.engine = "onednn"
    assert cpu.engine == "auto"
    with pytest.raises(RuntimeError):
        with cpu.flags(engine="torch", benchmark=True):
            assert (cpu.engine, cpu.benchmark) == ("torch", True)
            raise RuntimeError("leaves the block")
    assert (cpu.engine, cpu.benchmark) == ("auto", False)


def test_environment_variables_set_the_defaults():
    code = ("import rnnkernels; b = rnnkernels.backends.cpu; "
            "print(b.engine, b.benchmark, rnnkernels.build_info()['cpu_engine']['engine'])")
    for env, want in (({"RNNKERNELS_CPU_ENGINE": "torch", "RNNKERNELS_CPU_BENCHMARK": "1"}, "torch True torch"),
                      ({"RNNKERNELS_CPU_ENGINE": "auto"}, "auto False auto"),
                      ({"RNNKERNELS_CPU_ENGINE": "bogus"}, "auto False auto")):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), check=True,
                             capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        assert out.stdout.split("\n")[0] == want


def _row(cls, cell, dtype, mode, B, H, ratio, packed=False):
    return {"cpu_class": cls, "cpu_model": "test", "cell": cell, "dtype": dtype, "mode": mode,
            "T": 50, "B": B, "I": H, "H": H, "packed": packed, "nn_over_ours": ratio, "source": "test"}


def test_table_nearest_row_decides(monkeypatch):
    cls = cpu.cpu_class
    monkeypatch.setattr(engine_table, "ROWS", [
        _row(cls, "lstm", "float32", "inference", 1, 64, 0.9),
        _row(cls, "lstm", "float32", "inference", 64, 512, 1.2),
        _row(cls, "lstm", "float32", "training", 1, 64, 1.5),
        _row(cls, "lstm", "float32", "inference", 1, 64, 1.5, packed=True),
        _row("some-other-class", "gru", "float32", "inference", 4, 32, 0.5)])
    module = rnnkernels.LSTM(48, 48)

    def engine_for(B, H, grad=False, packed=False):
        m = module if H == 48 else rnnkernels.LSTM(H, H)
        x = torch.randn(3, B, H, requires_grad=grad)
        if packed:
            x = pack_padded_sequence(x, torch.full((B,), 3))
        with torch.set_grad_enabled(grad):
            m(x)
        return cpu.last_engine

    assert engine_for(2, 48)["engine"] == "torch"  # nearest: B=1, H=64, 0.9x
    assert "nearest measured B=1 H=64" in cpu.last_engine["reason"]
    assert engine_for(32, 300)["engine"] == "rnnkernels"  # nearest: B=64, H=512
    assert engine_for(2, 48, grad=True)["engine"] == "rnnkernels"  # the training row
    assert engine_for(2, 48, packed=True)["engine"] == "rnnkernels"  # packed measured apart
    gru = rnnkernels.GRU(32, 32)
    gru(torch.randn(3, 4, 32))
    assert cpu.last_engine["engine"] == "rnnkernels"  # only another class measured GRU
    assert cpu.last_engine["reason"].startswith("no measurement")


def test_benchmark_measures_once_per_key_and_keeps_the_random_state(monkeypatch):
    calls = []
    real = backends.autotune

    def counting(run_ours, run_torch, leaves=(), repeats=5):
        calls.append(len(leaves))
        return real(run_ours, run_torch, leaves, repeats)

    monkeypatch.setattr(backends, "autotune", counting)
    module = rnnkernels.LSTM(6, 8, num_layers=2, dropout=0.5)  # training mode: dropout draws
    x = torch.randn(5, 3, 6)
    cpu.benchmark = True
    torch.manual_seed(7)
    first = module(x)[0]
    chosen = cpu.last_engine["engine"]
    assert cpu.last_engine["reason"].startswith("measured (benchmark=True)")
    module(x)
    module(torch.randn(5, 3, 6))  # same key
    assert calls == [len(list(module.parameters()))]  # one measurement, training: backward too
    module(torch.randn(5, 4, 6))  # another batch size: another key
    assert len(calls) == 2 and len(cpu.autotune_cache) == 2
    # The measurement drew nothing the call could see: same output as the chosen engine
    # alone from the same seed.
    cpu.benchmark = False
    with cpu.flags(engine=chosen):
        torch.manual_seed(7)
        assert torch.equal(module(x)[0], first)


def test_benchmark_picks_the_faster_engine(monkeypatch):
    import time

    def slow_ours(*args, **kwargs):
        time.sleep(0.002)
        return real_layers(*args, **kwargs)

    from rnnkernels import functional
    real_layers = functional._run_layers
    monkeypatch.setattr(functional, "_run_layers", slow_ours)
    cpu.benchmark = True
    rnnkernels.RNN(4, 4)(torch.randn(2, 1, 4))
    assert cpu.last_engine["engine"] == "torch"
    found = cpu.autotune_cache[cpu.last_engine["key"]]
    assert found["rnnkernels_s"] > found["torch_s"]


def test_bad_input_raises_before_the_engine_choice():
    ours, ref = _pair("LSTM", 5, 7)
    cpu.engine = "torch"
    for bad in (torch.randn(3, 2, 4), torch.randn(3, 2, 5, dtype=torch.float64)):
        with pytest.raises(Exception) as want:
            ref(bad)
        with pytest.raises(type(want.value)):
            ours(bad)
    assert cpu.last_engine is None


def test_build_info_reports_the_engine():
    cpu.engine = "torch"
    rnnkernels.GRU(3, 4)(torch.randn(2, 1, 3))
    info = rnnkernels.build_info()["cpu_engine"]
    assert info["engine"] == "torch" and info["cpu_class"] == backends.cpu_class()
    assert info["last"]["engine"] == "torch" and info["last"]["key"]["cell"] == "gru"
    json.dumps(info)  # plain values


def test_seed_rows_from_bench_records(tmp_path):
    env = {"cpu_class": "x86-test", "cpu_model": "Test CPU", "date": "2026-12-03T00:00:00",
           "git": {"commit": "0123456789"}}

    ours_engine = engine_from_op_names({"rnnkernels::rnn_layer"})
    assert ours_engine == engine_seed.OUR_ENGINE

    def record(cell, B, speedup, engine=ours_engine, layers=1):
        case = {"cell": cell, "T": 10, "B": B, "I": 8, "H": 8, "layers": layers, "bidirectional": False,
                "proj": 0, "mode": "inference", "dtype": "float32", "device": "cpu", "packed": False}
        return {"key": f"{cell}|{B}", "case": case, "ours": {"engine": engine}, "speedup": speedup, "env": env}

    records = [record("lstm", 1, 0.8), record("lstm", 1, 0.9), record("lstm", 1, 1.3),
               record("gru", 4, 2.0), record("gru", 8, 0.5, engine="torch:oneDNN"),
               record("rnn", 4, 1.1, layers=2)]
    rows, skipped = engine_seed.rows_from_records(records)
    assert sorted((r["cell"], r["B"], r["nn_over_ours"]) for r in rows) == [("gru", 4, 2.0), ("lstm", 1, 0.9)]
    assert len(skipped) == 2
    old = [_row("x86-test", "lstm", "float32", "inference", 1, 8, 5.0), _row("x86-other", "lstm", "float32",
                                                                              "inference", 1, 8, 0.1)]
    old[0].update(T=10, I=8)
    merged = engine_seed.merge(old, rows)
    assert len(merged) == 3 and {r["nn_over_ours"] for r in merged} == {0.1, 0.9, 2.0}
    table = tmp_path / "table.py"
    engine_seed.write_table(merged, table)
    assert engine_seed._load_rows(table) == merged


def test_shipped_table_rows_are_well_formed():
    for row in engine_table.ROWS:
        EngineKey(row["cell"], row["dtype"], row["mode"], row["T"], row["B"], row["I"], row["H"])
        assert row["cpu_class"] in ("x86-amx", "x86-avx512-bf16", "x86-avx512", "x86-avx2", "other")
        assert row["nn_over_ours"] > 0 and row["source"] and row["cpu_model"]


def test_the_bench_sets_the_engine_for_its_run_only():
    """An in-process bench run (tests, notebooks) gives the caller's setting back; it set
    the engine globally before, which routed later tests' cells to torch."""
    from rnnkernels.bench import cli

    assert cpu.engine == "auto"
    cli.run_main(["--cells", "rnn", "-T", "2", "-B", "1", "-H", "4", "--modes", "inference",
                  "--repeats", "1", "--no-lb", "--no-ceilings", "--no-save", "--no-progress",
                  "--no-legend", "--engine", "torch", "--min-block-ms", "1", "--warmup-ms", "1"])
    assert cpu.last_engine["engine"] == "torch"
    assert cpu.engine == "auto"
