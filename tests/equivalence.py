"""Shared machinery of the equivalence tests: build an rnnkernels module and its golden
float64 torch.nn twin with the same state_dict, feed both the same random inputs and
random upstream gradients, and compare outputs, final states and the gradients with
respect to the input, the initial states and every named parameter.

Tolerances (see ``assert_matches``): float64 results must meet ``assert_close``'s float64
defaults against the float64 golden, float32 results its float32 defaults
(rtol 1.3e-6, atol 1e-5) on values cast to float64. Cases run with
``relative_to_torch_fp32=True`` (long sequences, big batches), where torch.nn's own
float32 result already exceeds those defaults, are judged against torch.nn's float32
error on the same case instead; see ``assert_matches``.

Threads: the golden torch.nn modules always run on one thread (their per-step ops are
too small to gain from threads). Ours runs with `ours_threads` threads: None keeps
torch's default (two on the CI machine), which is what the threaded tests use (the two
directions of a bidirectional layer side by side, two-thread teams for big steps). The
large option matrices pass 1: on a shared, oversubscribed machine every two-thread
OpenMP region waits a scheduler tick (about 4 ms) for its second thread, which made a
small case 25 times slower (0.45 s instead of 0.018 s) without testing anything more.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels

INPUT_SIZE = 33
HIDDEN_SIZE = 17
PROJ_SIZE = 5

# name -> (class name in torch.nn and rnnkernels, constructor options)
SEQUENCE_KINDS = {
    "rnn_tanh": ("RNN", dict(nonlinearity="tanh")),
    "rnn_relu": ("RNN", dict(nonlinearity="relu")),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=PROJ_SIZE)),
    "gru": ("GRU", {}),
}
CELL_KINDS = {
    "rnn_cell_tanh": ("RNNCell", dict(nonlinearity="tanh")),
    "rnn_cell_relu": ("RNNCell", dict(nonlinearity="relu")),
    "lstm_cell": ("LSTMCell", {}),
    "gru_cell": ("GRUCell", {}),
}

# How a sequence is fed to the module.
LAYOUTS = ("time_major", "batch_first", "unbatched", "unbatched_batch_first", "packed_sorted",
           "packed_unsorted")

FLOAT32_TOL = dict(rtol=1.3e-6, atol=1e-5)
FLOAT64_TOL = dict(rtol=1e-7, atol=1e-7)


def tolerance(dtype: torch.dtype) -> dict:
    return FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL


@contextlib.contextmanager
def threads(count: int | None):
    """Runs the block with torch.set_num_threads(count); None leaves the setting alone."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_thread():
    return threads(1)


def _module(namespace, kind: str, **options) -> nn.Module:
    class_name, kind_options = {**SEQUENCE_KINDS, **CELL_KINDS}[kind]
    return getattr(namespace, class_name)(**{**kind_options, **options})


def torch_module(kind: str, dtype: torch.dtype, **options) -> nn.Module:
    """The torch.nn module of `kind` (a key of SEQUENCE_KINDS or CELL_KINDS) in `dtype`."""
    return _module(nn, kind, **options).to(dtype)


def module_pair(class_name: str, dtype: torch.dtype, golden_dtype: torch.dtype = torch.float64,
                **options):
    """(torch.nn in `golden_dtype`, ours in `dtype`) of one class, torch.nn's state_dict
    loaded into ours."""
    golden = getattr(nn, class_name)(**options).to(golden_dtype)
    ours = getattr(rnnkernels, class_name)(**options).to(dtype)
    ours.load_state_dict(golden.state_dict())
    return golden, ours


def build_pair(kind: str, dtype: torch.dtype, **options):
    """(ours in `dtype`, golden torch.nn in float64), golden's state_dict loaded into ours."""
    class_name, kind_options = {**SEQUENCE_KINDS, **CELL_KINDS}[kind]
    golden, ours = module_pair(class_name, dtype, **{**kind_options, **options})
    return ours, golden


# ---------------------------------------------------------------- sequences


@dataclass(frozen=True)
class SequenceCase:
    kind: str
    steps: int = 5
    batch: int = 4
    input_size: int = INPUT_SIZE
    hidden_size: int = HIDDEN_SIZE
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False
    layout: str = "time_major"
    given_hx: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        assert self.layout in LAYOUTS, self.layout
        assert self.kind in SEQUENCE_KINDS, self.kind

    @property
    def packed(self) -> bool:
        return self.layout.startswith("packed")

    @property
    def unbatched(self) -> bool:
        return self.layout.startswith("unbatched")

    @property
    def batch_first(self) -> bool:
        return self.layout in ("batch_first", "unbatched_batch_first")

    @property
    def is_lstm(self) -> bool:
        return SEQUENCE_KINDS[self.kind][0] == "LSTM"

    @property
    def output_size(self) -> int:
        return SEQUENCE_KINDS[self.kind][1].get("proj_size", 0) or self.hidden_size

    def module_options(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional)

    def build(self, dtype: torch.dtype):
        return build_pair(self.kind, dtype, **self.module_options())

    def lengths(self) -> Tensor:
        """Sequence lengths of the packed layouts: from `steps` down to 1, shuffled when
        unsorted (the longest first when sorted, as enforce_sorted demands)."""
        lengths = torch.linspace(self.steps, 1, self.batch).round().long()
        lengths[0] = self.steps
        if self.layout == "packed_unsorted":
            lengths = lengths[torch.randperm(self.batch)]
            if self.batch > 1 and bool((lengths[1:] <= lengths[:-1]).all()):
                lengths = lengths.flip(0)  # make sure the order really needs sorting
        return lengths

    def make_inputs(self) -> dict:
        """Random float64 inputs: the (padded) input and the initial states, if given."""
        states = self.num_layers * (2 if self.bidirectional else 1)
        if self.unbatched:
            x = torch.randn(self.steps, self.input_size, dtype=torch.float64)
        elif self.batch_first:
            x = torch.randn(self.batch, self.steps, self.input_size, dtype=torch.float64)
        else:
            x = torch.randn(self.steps, self.batch, self.input_size, dtype=torch.float64)
        inputs = dict(input=x, lengths=self.lengths() if self.packed else None)
        if self.given_hx:
            lead = (states,) if self.unbatched else (states, self.batch)
            inputs["h0"] = torch.randn(*lead, self.output_size, dtype=torch.float64)
            if self.is_lstm:
                inputs["c0"] = torch.randn(*lead, self.hidden_size, dtype=torch.float64)
        return inputs


def _leaf(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.detach().to(dtype).requires_grad_()


def run_sequence(module: nn.Module, case: SequenceCase, inputs: dict, dtype: torch.dtype,
                 seed: int | None = None):
    """Runs `module` on `inputs` cast to `dtype`.

    Returns (results, leaves, packed): results maps "output", "h_n" (and "c_n") to
    tensors (the PackedSequence data for packed input), leaves maps the names of the
    differentiable inputs ("input", "h0", "c0", then the module's parameter names) to
    the tensors gradients are taken for, and packed is the output PackedSequence or None.
    """
    leaves = {"input": _leaf(inputs["input"], dtype)}
    for name in ("h0", "c0"):
        if name in inputs:
            leaves[name] = _leaf(inputs[name], dtype)
    feed = leaves["input"]
    if case.packed:
        feed = pack_padded_sequence(feed, inputs["lengths"], batch_first=False,
                                    enforce_sorted=case.layout == "packed_sorted")
    hx = None
    if "h0" in leaves:
        hx = (leaves["h0"], leaves["c0"]) if case.is_lstm else leaves["h0"]
    if seed is not None:
        torch.manual_seed(seed)
    output, hidden = module(feed, hx)
    packed = output if isinstance(output, PackedSequence) else None
    results = {"output": packed.data if packed is not None else output}
    if case.is_lstm:
        results["h_n"], results["c_n"] = hidden
    else:
        results["h_n"] = hidden
    leaves.update(module.named_parameters())
    return results, leaves, packed


def gradients(results: dict, leaves: dict, upstream: dict) -> dict:
    """Gradients of sum(results[k] * upstream[k]) with respect to every leaf."""
    names = list(results)
    outs = [results[k] for k in names]
    grads = [upstream[k].to(results[k].dtype) for k in names]
    got = torch.autograd.grad(outs, list(leaves.values()), grads)
    return {f"grad {name}": g for name, g in zip(leaves, got)}


def random_upstream(results: dict) -> dict:
    """A random float64 upstream gradient for every result (never all-ones, never zero)."""
    return {k: torch.randn(v.shape, dtype=torch.float64) for k, v in results.items()}


def _error_ratio(actual: Tensor, expected: Tensor, tol: dict) -> float:
    """max |actual - expected| / (atol + rtol |expected|): <= 1 means assert_close passes."""
    if actual.numel() == 0:
        return 0.0
    actual, expected = actual.detach().double(), expected.detach()
    diff = (actual - expected).abs()
    return float((diff / (tol["atol"] + tol["rtol"] * expected.abs())).max())


def assert_matches(name: str, actual: Tensor, expected: Tensor, dtype: torch.dtype,
                   torch_fp32: Tensor | None = None, context: str = "") -> None:
    """Asserts `actual` (ours, in `dtype`) matches the float64 golden `expected`.

    The plain rule is torch.testing.assert_close with the defaults of `dtype` on values
    cast to float64.

    Rule for large float32 cases (`torch_fp32` given: torch.nn's own float32 result on the
    same case). Float32 accumulation error grows with sequence length and batch, and there
    torch.nn itself exceeds the float32 defaults (error ratios, defined next, up to 2.6
    measured at B=64 and 128 and at T=500). With the error ratio r(x) = max |x - golden| / (atol + rtol |golden|)
    at the float32 default atol/rtol (r <= 1 is the plain rule), ours must satisfy
        r(ours) <= 1 + 2 r(torch.nn float32),
    i.e. the defaults' tolerance plus twice torch.nn's own error. The "1" (rather than a
    tiny constant) absorbs the chance spread of a max over few elements: a bias gradient
    has 17, and torch.nn's max error on it can happen to be small.
    """
    assert actual.shape == expected.shape, f"{context}{name}: shape {tuple(actual.shape)} != " \
                                           f"golden {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{context}{name}: dtype {actual.dtype}, expected {dtype}"
    tol = tolerance(dtype)
    if torch_fp32 is not None and dtype == torch.float32:
        ours_ratio = _error_ratio(actual, expected, tol)
        torch_ratio = _error_ratio(torch_fp32, expected, tol)
        assert ours_ratio <= 1 + 2 * torch_ratio, (
            f"{context}{name}: float32 error ratio {ours_ratio:.3g} exceeds 1 + twice "
            f"torch.nn's own float32 ratio {torch_ratio:.3g}")
        return
    torch.testing.assert_close(actual.detach().double(), expected.detach(), **tol,
                               msg=lambda m: f"{context}{name}: {m}")


def assert_packed_metadata_equal(ours: PackedSequence, golden: PackedSequence) -> None:
    assert torch.equal(ours.batch_sizes, golden.batch_sizes)
    for field in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(ours, field), getattr(golden, field)
        assert (a is None) == (b is None), f"{field}: {a} vs {b}"
        if a is not None:
            assert torch.equal(a, b), f"{field}: {a} vs {b}"


def check_sequence_case(case: SequenceCase, dtype: torch.dtype, train: bool = False,
                        relative_to_torch_fp32: bool = False,
                        ours_threads: int | None = None) -> None:
    """Ours in `dtype` against the float64 torch.nn golden: results and all gradients.

    With `train` both modules are in training mode and every forward runs after the
    same torch.manual_seed, so dropout must draw identical masks. Ours runs with
    `ours_threads` threads (None: torch's default).
    """
    ours, golden = case.build(dtype)
    ours.train(train)
    golden.train(train)
    inputs = case.make_inputs()
    seed = int(torch.randint(0, 2**31, ())) if train else None
    with single_thread():
        want, want_leaves, want_packed = run_sequence(golden, case, inputs, torch.float64, seed)
        upstream = random_upstream(want)
        want_grads = gradients(want, want_leaves, upstream)
    with threads(ours_threads):
        got, got_leaves, got_packed = run_sequence(ours, case, inputs, dtype, seed)
        got_grads = gradients(got, got_leaves, upstream)

    torch_fp32 = {}
    if relative_to_torch_fp32 and dtype == torch.float32:
        twin = torch_module(case.kind, torch.float32, **case.module_options())
        twin.load_state_dict(golden.state_dict())
        twin.train(train)
        with single_thread():
            res, leaves, _ = run_sequence(twin, case, inputs, torch.float32, seed)
            torch_fp32 = {**res, **gradients(res, leaves, upstream)}

    context = f"{case} {dtype}: "
    if case.packed:
        assert got_packed is not None and want_packed is not None
        assert_packed_metadata_equal(got_packed, want_packed)
    assert list(got) == list(want) and list(got_grads) == list(want_grads)
    for name in want:
        assert_matches(name, got[name], want[name], dtype, torch_fp32.get(name), context)
    for name in want_grads:
        assert_matches(name, got_grads[name], want_grads[name], dtype, torch_fp32.get(name),
                       context)


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class CellCase:
    kind: str
    batch: int = 4
    input_size: int = INPUT_SIZE
    hidden_size: int = HIDDEN_SIZE
    bias: bool = True
    unbatched: bool = False
    given_hx: bool = True

    def __post_init__(self):
        assert self.kind in CELL_KINDS, self.kind

    @property
    def is_lstm(self) -> bool:
        return CELL_KINDS[self.kind][0] == "LSTMCell"

    def module_options(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias)

    def build(self, dtype: torch.dtype):
        return build_pair(self.kind, dtype, **self.module_options())

    def make_inputs(self) -> dict:
        lead = () if self.unbatched else (self.batch,)
        inputs = dict(input=torch.randn(*lead, self.input_size, dtype=torch.float64))
        if self.given_hx:
            inputs["h0"] = torch.randn(*lead, self.hidden_size, dtype=torch.float64)
            if self.is_lstm:
                inputs["c0"] = torch.randn(*lead, self.hidden_size, dtype=torch.float64)
        return inputs


def run_cell(module: nn.Module, case: CellCase, inputs: dict, dtype: torch.dtype):
    """Like run_sequence for a cell: results "h" (and "c"), and the differentiable leaves."""
    leaves = {name: _leaf(t, dtype) for name, t in inputs.items()}
    hx = None
    if "h0" in leaves:
        hx = (leaves["h0"], leaves["c0"]) if case.is_lstm else leaves["h0"]
    out = module(leaves["input"], hx)
    results = {"h": out[0], "c": out[1]} if case.is_lstm else {"h": out}
    leaves.update(module.named_parameters())
    return results, leaves


def check_cell_case(case: CellCase, dtype: torch.dtype, ours_threads: int | None = None) -> None:
    ours, golden = case.build(dtype)
    inputs = case.make_inputs()
    with single_thread():
        want, want_leaves = run_cell(golden, case, inputs, torch.float64)
        upstream = random_upstream(want)
        want_grads = gradients(want, want_leaves, upstream)
    with threads(ours_threads):
        got, got_leaves = run_cell(ours, case, inputs, dtype)
        got_grads = gradients(got, got_leaves, upstream)
    context = f"{case} {dtype}: "
    assert list(got) == list(want) and list(got_grads) == list(want_grads)
    for name in want:
        assert_matches(name, got[name], want[name], dtype, context=context)
    for name in want_grads:
        assert_matches(name, got_grads[name], want_grads[name], dtype, context=context)


# ---------------------------------------------------------------- bfloat16 / float16


def _assert_error_within_twice_torch(context: str, got: dict, theirs: dict, want: dict) -> None:
    """Every tensor of ours within twice torch.nn's own error in the same dtype, both
    measured against the float64 golden (STYLE: the low-precision rule)."""
    assert list(got) == list(theirs) == list(want)
    for name in want:
        assert got[name].dtype == theirs[name].dtype, f"{context}{name}: dtype"
        err_nn = (theirs[name].detach().double() - want[name]).abs().max().item()
        err_ours = (got[name].detach().double() - want[name]).abs().max().item()
        assert err_ours <= 2 * err_nn + 1e-6, (
            f"{context}{name}: our error {err_ours:.3g} exceeds twice torch.nn's {err_nn:.3g}")


def _check_low_precision(case, dtype: torch.dtype, run) -> None:
    """Ours and torch.nn in `dtype` against the float64 golden, results and gradients;
    run(module, inputs, dtype) -> (results, leaves).

    ReLU cells: values only. Their gradients jump at the kink: a pre-activation within
    rounding of 0 lands on the other side in low precision, and the gradients through
    that unit then differ from float64's by O(1). Which units flip is chance and differs
    between any two implementations (measured, bfloat16 RNN relu T=7 B=9 bidirectional,
    six seeds: torch.nn and ours each 0-3 flips, weight-gradient errors 0.07 without a
    flip and 0.9-1.1 with one, for both), so the largest gradient error measures luck,
    not rounding. The relu backward is exact in float32/float64 (test_equivalence.py)
    and shares every bfloat16 load and store with tanh, which is judged here in full."""
    ours, golden = case.build(dtype)
    twin = torch_module(case.kind, dtype, **case.module_options())
    twin.load_state_dict(golden.state_dict())
    inputs = case.make_inputs()
    with_gradients = "relu" not in case.kind
    runs = {}
    for name, module, run_dtype in (("want", golden, torch.float64), ("theirs", twin, dtype),
                                    ("got", ours, dtype)):
        results, leaves = run(module, inputs, run_dtype)
        if name == "want":
            upstream = random_upstream(results)
        runs[name] = {**results, **(gradients(results, leaves, upstream) if with_gradients
                                    else {})}
    _assert_error_within_twice_torch(f"{case} {dtype}: ", runs["got"], runs["theirs"],
                                     runs["want"])


def check_low_precision_sequence_case(case: SequenceCase, dtype: torch.dtype) -> None:
    _check_low_precision(case, dtype,
                         lambda m, inputs, d: run_sequence(m, case, inputs, d)[:2])


def check_low_precision_cell_case(case: CellCase, dtype: torch.dtype) -> None:
    _check_low_precision(case, dtype, lambda m, inputs, d: run_cell(m, case, inputs, d))
