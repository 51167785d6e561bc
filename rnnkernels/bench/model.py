"""The work model of a case: its matrix products (FLOPs, and the lower bound's list) and
its compulsory memory traffic (bytes).

Notation: T steps, B sequences, N = sum of the sequence lengths (T*B when dense), D
directions, G gates (LSTM 4, GRU 3, RNN 1), H hidden size, P = proj_size or H, I_l the
input size of layer l (I for layer 0, D*P above). "A [m, k] x [k, n]" is a product of
2*m*n*k FLOPs. Elementwise work (gates, bias adds, reductions) is not counted in FLOPs:
GFLOP/s here means matrix-product FLOPs per second, the same count for torch.nn and for
rnnkernels, so their GFLOP/s differ exactly as their times do.

Products of one pass, in the order they are issued (Note [gemm lower bound] in
csrc/bench/gemm_lower_bound.cpp times this list):

forward, per layer l
  input projection  X_l [N, I_l] x W_ih^T [I_l, D*G*H]        one GEMM for both directions
  per direction, per step t (B_t rows, B_t = B when dense)
    recurrent       h_{t-1} [B_t, P] x W_hh^T [P, G*H]
    projection      m_t [B_t, H] x W_hr^T [H, P]               LSTM with proj_size only
backward (training), per layer from the last, per direction
  per step t, from the last
    projection      dh_t [B_t, P] x W_hr [P, H]                LSTM with proj_size only
    recurrent       dgates_t [B_t, G*H] x W_hh [G*H, P]        gives dh_{t-1}; T products,
                                                               the one at t=0 gives dh_0
  dW_hh             dgates^T [G*H, N] x H_prev [N, P]
  dW_hr             dh^T [P, N] x M [N, H]                     LSTM with proj_size only
then, per layer, for both directions at once (autograd of the input projection)
  dW_ih^T           X_l^T [I_l, N] x dgates [N, D*G*H]         (= dW_ih [D*G*H, N] x [N, I_l])
  dX_l              dgates [N, D*G*H] x W_ih [D*G*H, I_l]      counted for every layer above
                                                               0, and for layer 0 when the
                                                               input requires grad (the
                                                               benchmark's training mode sets
                                                               x.requires_grad_())

Bytes: the compulsory traffic of that decomposition, counted per kernel: every operand
a kernel reads is read once and every result written once; weights and the small
states are read once per kernel (assumed to stay in cache across the steps of the time
loop, as a fused kernel keeps them). Kernels of one pass, per layer l:
  forward   input projection GEMM  reads X_l, W_ih, b_ih;         writes x_proj [N, D*G*H]
            recurrence             reads x_proj, W_hh, b_hh, W_hr, h0 (c0);
                                   writes output [N, D*P], h_n (c_n), and in training the
                                   workspace [D, N, S*H] (S: LSTM 5, GRU 4, RNN 0)
  backward  recurrence backward    reads grad_output [N, D*P], output, workspace, W_hh, W_hr;
                                   writes dgates [N, D*G*H], dh0 (dc0)
            dW_hh (per direction)  reads dgates, output;          writes dW_hh
            dW_hr (per direction)  reads dh [N, P], M [N, H];      writes dW_hr
            bias gradients         read dgates;                   write db_ih, db_hh
            dW_ih                  reads X_l, dgates;             writes dW_ih
            dX_l (if counted)      reads dgates, W_ih;            writes dX_l [N, I_l]
GB/s is those bytes per second of measured time: a floor on what the kernels moved.

*Cell cases are one step of the same decomposition (T = 1, N = B). Their given state
requires grad in training (in a user's unrolled loop it comes from the previous step), so
the backward's recurrent product, which gives its gradient, is counted; and as a cell
returns h' (and c'), no h_n beside the output is written.

Autocast cases count every element at the autocast dtype's 2 bytes: autocast runs each
product on 2-byte copies of the float32 weights and input (rnnkernels casts them once per
call). The casts' own traffic (4 bytes read and 2 written per weight and input element,
each call) is left out, and so are float32 results (on CPU torch.nn's GRU, LSTMCell and
GRUCell return float32 under autocast, and rnnkernels matches them), so GB/s stays a floor.
FLOPs do not depend on the dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cases import WORKSPACE_PER_HIDDEN, Case, batch_sizes


@dataclass(frozen=True)
class Gemm:
    """C[m, n] = op(A) [m, k] x op(B) [k, n], row-major; A stored [k, m] when trans_a,
    B stored [n, k] when trans_b. ``count`` identical products issued in a row."""

    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    phase: str = ""
    count: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k * self.count

    def as_list(self) -> list[int]:
        return [self.m, self.n, self.k, int(self.trans_a), int(self.trans_b)]


def layer_input_size(case: Case, layer: int) -> int:
    return case.I if layer == 0 else case.directions * case.output_size


def _rows(case: Case) -> int:
    return sum(batch_sizes(case))


def _merge_runs(products: list[Gemm]) -> list[Gemm]:
    """Consecutive identical products as one entry with a count (order kept)."""
    out: list[Gemm] = []
    for x in products:
        last = out[-1] if out else None
        if last is not None and (last.m, last.n, last.k, last.trans_a, last.trans_b, last.phase) == (
                x.m, x.n, x.k, x.trans_a, x.trans_b, x.phase):
            out[-1] = Gemm(x.m, x.n, x.k, x.trans_a, x.trans_b, x.phase, last.count + x.count)
        else:
            out.append(x)
    return out


def gemms(case: Case, input_requires_grad: bool | None = None) -> list[Gemm]:
    """The matrix products of one pass of the case, in issue order (see the module doc),
    runs of identical products merged into one entry with a count. input_requires_grad
    defaults to True in training mode (the benchmark's setting)."""
    if input_requires_grad is None:
        input_requires_grad = case.mode == "training"
    g, h, p, d = case.gates, case.H, case.output_size, case.directions
    n_rows = _rows(case)
    steps = batch_sizes(case)
    has_proj = case.proj > 0
    products: list[Gemm] = []
    for layer in range(case.layers):
        i_l = layer_input_size(case, layer)
        products.append(Gemm(n_rows, d * g * h, i_l, False, True, "fwd input projection"))
        for _ in range(d):
            for rows in steps:
                products.append(Gemm(rows, g * h, p, False, True, "fwd recurrent"))
                if has_proj:
                    products.append(Gemm(rows, p, h, False, True, "fwd projection"))
    if case.mode == "training":
        for layer in reversed(range(case.layers)):
            i_l = layer_input_size(case, layer)
            for _ in range(d):
                for rows in reversed(steps):
                    if has_proj:
                        products.append(Gemm(rows, h, p, False, False, "bwd projection"))
                    products.append(Gemm(rows, p, g * h, False, False, "bwd recurrent"))
                products.append(Gemm(g * h, p, n_rows, True, False, "bwd dW_hh"))
                if has_proj:
                    products.append(Gemm(p, h, n_rows, True, False, "bwd dW_hr"))
            products.append(Gemm(i_l, d * g * h, n_rows, True, False, "bwd dW_ih"))
            if layer > 0 or input_requires_grad:
                products.append(Gemm(n_rows, i_l, d * g * h, False, False, "bwd dX"))
    return _merge_runs(products)


def gemm_flops(case: Case, input_requires_grad: bool | None = None) -> int:
    return sum(x.flops for x in gemms(case, input_requires_grad))


def gemm_sequence(case: Case, input_requires_grad: bool | None = None) -> list[list[int]]:
    """The products expanded one entry per call, for rnnkernels._bench_C.gemm_sequence_seconds."""
    out = []
    for x in gemms(case, input_requires_grad):
        out.extend([x.as_list()] * x.count)
    return out


def traffic_elements(case: Case, input_requires_grad: bool | None = None) -> dict[str, int]:
    """Elements read plus written by each kernel kind of one pass (see the module doc)."""
    if input_requires_grad is None:
        input_requires_grad = case.mode == "training"
    g, h, p, d, b = case.gates, case.H, case.output_size, case.directions, case.B
    n_rows = _rows(case)
    is_lstm, has_proj = case.cell in ("lstm", "lstm_cell"), case.proj > 0
    training = case.mode == "training"
    workspace = d * n_rows * WORKSPACE_PER_HIDDEN[case.cell] * h if training else 0
    state = d * b * p + (d * b * h if is_lstm else 0)  # h0 (+ c0): one state of all directions
    # h_n (+ c_n) beside the output; a *Cell's h' is its output, only c' comes beside it
    state_written = state - d * b * p if case.is_step_cell else state
    w_hr = d * p * h if has_proj else 0
    out: dict[str, int] = {}

    def add(name, elements):
        out[name] = out.get(name, 0) + elements

    for layer in range(case.layers):
        i_l = layer_input_size(case, layer)
        x_proj = n_rows * d * g * h
        output = n_rows * d * p
        add("fwd input projection", n_rows * i_l + d * g * h * i_l + d * g * h + x_proj)
        add("fwd recurrence", x_proj + d * g * h * p + d * g * h + w_hr + state
            + output + state_written + workspace)
        if not training:
            continue
        add("bwd recurrence", output + output + workspace + d * g * h * p + w_hr + x_proj + state)
        add("bwd dW_hh", x_proj + output + d * g * h * p)
        if has_proj:
            add("bwd dW_hr", n_rows * d * p + n_rows * d * h + w_hr)
        add("bwd bias", x_proj + 2 * d * g * h)
        add("bwd dW_ih", n_rows * i_l + x_proj + d * g * h * i_l)
        if layer > 0 or input_requires_grad:
            add("bwd dX", x_proj + d * g * h * i_l + n_rows * i_l)
    return out


def traffic_bytes(case: Case, input_requires_grad: bool | None = None) -> int:
    return case.element_bytes * sum(traffic_elements(case, input_requires_grad).values())


def kernel_saved_bytes(case: Case) -> int:
    """What rnnkernels keeps for the backward of a training pass, all layers and
    directions: per row the workspace (S*H: LSTM 5H, GRU 4H, RNN 0) and the layer's output
    (P), which holds h_t. (h0/c0 and the weights are saved too but are not per step.)"""
    per_row = case.directions * (WORKSPACE_PER_HIDDEN[case.cell] * case.H + case.output_size)
    return case.layers * _rows(case) * per_row * case.element_bytes
