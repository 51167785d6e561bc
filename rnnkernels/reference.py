"""Pure-PyTorch reference of rnnkernels.functional: the executable specification.

Same functions and arguments as rnnkernels.functional (``lstm``, ``gru``, ``rnn`` with
torch._VF's signatures, and the cells), written one time step at a time from the
equations in the torch.nn documentation. Clarity over speed: every step is a handful of
plain tensor ops, so autograd differentiates it and any dtype or device works.

Equations (x the step input, h the hidden state, c the LSTM cell state):
  RNN   h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),  act = tanh or relu
  LSTM  i, f, g, o = chunks of x W_ih^T + b_ih + h W_hh^T + b_hh
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c'),  then h' = h' W_hr^T when proj_size > 0
  GRU   r, z, n_x = chunks of x W_ih^T + b_ih;  r_h, z_h, n_h = chunks of h W_hh^T + b_hh
        r = sigmoid(r + r_h), z = sigmoid(z + z_h), n = tanh(n_x + r * n_h)
        h' = (1 - z) * n + z * h

Sequences are handled as rows, the layout of a PackedSequence: ``x`` [N, I] with
``batch_sizes`` [T], step t owning rows offsets[t] : offsets[t] + batch_sizes[t]. A dense
[T, B, I] input is the special case N = T*B, batch_sizes = [B] * T. At every step the
first batch_sizes[t] sequences are active; the others keep their state, which is how a
finished sequence's h_n is its last state (forward) and how a sequence that has not
started yet enters with h0 (reverse direction).

Zoneout (opt-in, Krueger et al. 2016): after every step each unit of a state keeps its
previous value with weight m, ``state = m * prev + (1 - m) * candidate``, where the
candidate is the cell's update above (LSTM: h' and c' both computed from c' before
zoneout) and m comes from ``zoneout_weights``: per layer, before the layer runs, a
[D, N, P] (LSTM [D, N, P+H], h's then c's) tensor of Bernoulli(p) draws in training and
of p in evaluation. The output at each step is the state after zoneout.

Layer-normalised LSTM (opt-in, Ba et al. 2016; Note [layer-normalised LSTM] in
csrc/include/rnnkernels/cell_math.h): ``layer_norm`` holds per layer and direction
(layer-major, as _flat_weights) the LayerNorm weights of the input product [4H], of the
recurrent product [4H] and of the cell state [H], then the cell state's LayerNorm bias
[H] when ``has_biases``:
  i, f, g, o = chunks of LN(x W_ih^T; w_ln_ih) + LN(h W_hh^T; w_ln_hh) + b_ih + b_hh
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g),  h' = sigmoid(o) * tanh(LN(c'; w_ln_c, b_ln_c))
with LN over the whole vector (4H or H), eps 1e-5, no bias for the two products.

Between layers (not after the last) the layer output [N, D*P] goes through
``F.dropout(p, training=True)`` when ``train`` and ``dropout > 0``: the same call on the
same-shaped tensor as rnnkernels.functional, so with one seed both draw the same mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._layers import (LAYER_NORM_EPS, check_layer_norm_options, projection_size, run_layers,
                      split_layer_norm, zoneout_weights)

__all__ = ["lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "zoneout_weights",
           "LAYER_NORM_EPS", "split_layer_norm", "check_layer_norm_options"]

# ---------------------------------------------------------------- cells


def rnn_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step: input [B, I], hx [B, H] -> h' [B, H]."""
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
    return rnn_recurrence(F.linear(input, w_ih, b_ih), hx, w_hh, b_hh, nonlinearity == "relu")


# The recurrences below take the step's input product (x W_ih^T + b_ih; the layer-normalised
# LSTM's LN(x W_ih^T)) and do the rest of the step, so that a caller can compute the input
# products of a whole sequence in one product (rnnkernels/_onnx_graphs.py). TorchScript
# compiles them (plain tensor ops, Optional arguments): the ONNX exporters' loops call them.

def rnn_recurrence(x_part: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None,
                   relu: bool) -> Tensor:
    """x_part [B, H], h [B, H] -> h' [B, H]."""
    pre = x_part + F.linear(h, w_hh, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


def lstm_recurrence(x_part: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None,
                    w_hr: Tensor | None) -> tuple[Tensor, Tensor]:
    """x_part [B, 4H], h [B, P], c [B, H] -> (h' [B, P], c' [B, H])."""
    h_next, c_next = lstm_gates(x_part + F.linear(h, w_hh, b_hh), c)
    if w_hr is not None:
        h_next = F.linear(h_next, w_hr, None)
    return h_next, c_next


def lstm_gates(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-activations [B, 4H] (i, f, g, o, both biases in), c [B, H] -> (h', c') before
    the projection."""
    i, f, g, o = gates.chunk(4, dim=1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_next), c_next


def layer_norm_lstm_recurrence(x_part: Tensor, h: Tensor, c: Tensor, w_hh: Tensor,
                               ln_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                               c_weight: Tensor, c_bias: Tensor | None, hidden_size: int,
                               eps: float = LAYER_NORM_EPS) -> tuple[Tensor, Tensor]:
    """x_part = LN(x W_ih^T; w_ln_ih) [B, 4H], h, c [B, H] -> (h', c'). hidden_size (H)
    is an argument: TorchScript's ONNX export needs LayerNorm's shape as a constant."""
    gates = x_part + F.layer_norm(F.linear(h, w_hh), (4 * hidden_size,), ln_hh, None, eps)
    if b_ih is not None and b_hh is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    c_norm = F.layer_norm(c_next, (hidden_size,), c_weight, c_bias, eps)
    return torch.sigmoid(o) * torch.tanh(c_norm), c_next


def gru_recurrence(x_part: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """x_part [B, 3H] (r, z, n of x W_ih^T + b_ih), h [B, H] -> h' [B, H]."""
    return gru_gates(x_part, F.linear(h, w_hh, b_hh), h)


def gru_gates(x_part: Tensor, h_part: Tensor, h: Tensor) -> Tensor:
    """x_part [B, 3H] (x W_ih^T + b_ih), h_part [B, 3H] (h W_hh^T + b_hh), h -> h'."""
    r_x, z_x, n_x = x_part.chunk(3, dim=1)
    r_h, z_h, n_h = h_part.chunk(3, dim=1)
    r = torch.sigmoid(r_x + r_h)
    z = torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return (1 - z) * n + z * h


def layer_norm_input(input: Tensor, w_ih: Tensor, ln_ih: Tensor) -> Tensor:
    """The layer-normalised LSTM's input part LN(x W_ih^T; w_ln_ih), over the last dim."""
    return F.layer_norm(F.linear(input, w_ih), (w_ih.shape[0],), ln_ih, None, LAYER_NORM_EPS)


def _lstm_step(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None):
    """input [B, I], h [B, P], c [B, H] -> (h' [B, P], c' [B, H])."""
    return lstm_recurrence(F.linear(input, w_ih, b_ih), h, c, w_hh, b_hh, w_hr)


def _layer_norm_lstm_step(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                          b_ih: Tensor | None, b_hh: Tensor | None, ln: dict):
    """input [B, I], h [B, H], c [B, H] -> (h', c') of the layer-normalised LSTM."""
    return layer_norm_lstm_recurrence(layer_norm_input(input, w_ih, ln["ih"]), h, c, w_hh,
                                      ln["hh"], b_ih, b_hh, ln["c_weight"], ln["c_bias"],
                                      c.shape[1])


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None):
    """One LSTM step: input [B, I], hx = (h [B, H], c [B, H]) -> (h', c')."""
    h, c = hx
    return _lstm_step(input, h, c, w_ih, w_hh, b_ih, b_hh, None)


def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """One GRU step: input [B, I], hx [B, H] -> h' [B, H]."""
    return gru_recurrence(F.linear(input, w_ih, b_ih), hx, w_hh, b_hh)


# ---------------------------------------------------------------- sequences


def _run_direction(step, x: Tensor, batch_sizes: list[int], states: list[Tensor], reverse: bool,
                   keep: Tensor | None = None):
    """Runs `step(x_rows, *state_rows) -> new state_rows` over all steps of one direction.

    x [N, I] in rows layout; states: the initial states, each [B, size]. keep: zoneout
    weights [N, sum of the state sizes] or None. Returns the output rows [N, P] (the
    first state after every step) and the final states.
    """
    offsets = [0]
    for b in batch_sizes[:-1]:
        offsets.append(offsets[-1] + b)
    order = reversed(range(len(batch_sizes))) if reverse else range(len(batch_sizes))
    outputs = [None] * len(batch_sizes)
    for t in order:
        active = batch_sizes[t]
        x_t = x[offsets[t]:offsets[t] + active]
        new = step(x_t, *[s[:active] for s in states])
        if keep is not None:
            rows = keep[offsets[t]:offsets[t] + active]
            sizes = [s.shape[1] for s in states]
            new = [m * s[:active] + (1 - m) * n
                   for n, s, m in zip(new, states, rows.split(sizes, dim=1))]
        # Sequences beyond `active` are finished (forward) or not started (reverse).
        states = [torch.cat([n, s[active:]], 0) for n, s in zip(new, states)]
        outputs[t] = new[0]
    return torch.cat(outputs, 0), states


def run_layer(cell: str, x: Tensor, dirs, h0: Tensor, c0: Tensor | None, batch_sizes: list[int],
              keep: Tensor | None = None, nonlinearity: str = "tanh", ln_dirs=None):
    """One layer, every direction, in rows layout: the op-level form of the recurrence.

    x [N, I]; dirs: per direction a dict of w_ih, w_hh, b_ih, b_hh, w_hr (None where
    absent); h0 [D, B, P]; c0 [D, B, H] (LSTM) or None; keep: zoneout weights [D, N, W]
    or None; ln_dirs: the layer-normalised LSTM's per-direction dicts or None. Returns
    (output [N, D*P], h_n [D, B, P], c_n [D, B, H] or None).
    """
    directions = []
    for d, w in enumerate(dirs):
        if cell == "lstm" and ln_dirs is not None:
            def step(x_t, h, c, w=w, ln=ln_dirs[d]):
                return _layer_norm_lstm_step(x_t, h, c, w["w_ih"], w["w_hh"], w["b_ih"],
                                             w["b_hh"], ln)
            states = [h0[d], c0[d]]
        elif cell == "lstm":
            def step(x_t, h, c, w=w):
                return _lstm_step(x_t, h, c, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"],
                                  w["w_hr"])
            states = [h0[d], c0[d]]
        elif cell == "gru":
            def step(x_t, h, w=w):
                return (gru_cell(x_t, h, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"]),)
            states = [h0[d]]
        else:
            def step(x_t, h, w=w):
                return (rnn_cell(x_t, h, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"],
                                 nonlinearity),)
            states = [h0[d]]
        directions.append((step, states))
    return _run_directions(cell, x, directions, batch_sizes, keep)


def _run_directions(cell: str, x: Tensor, directions, batch_sizes: list[int],
                    keep: Tensor | None = None):
    """run_layer's result from per-direction (step, initial states) pairs."""
    outputs, h_n, c_n = [], [], []
    for d, (step, states) in enumerate(directions):
        out, final = _run_direction(step, x, batch_sizes, states, reverse=d == 1,
                                    keep=None if keep is None else keep[d])
        outputs.append(out)
        h_n.append(final[0])
        if cell == "lstm":
            c_n.append(final[1])
    return (torch.cat(outputs, 1), torch.stack(h_n, 0),
            torch.stack(c_n, 0) if cell == "lstm" else None)


def _run_layers(cell: str, input: Tensor, h0: Tensor, c0: Tensor | None, params,
                has_biases: bool, num_layers: int, dropout: float, train: bool,
                bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None,
                nonlinearity: str = "tanh", zoneout_h: float = 0.0,
                zoneout_c: float | None = None, layer_norm=None):
    if batch_sizes is None:
        steps, batch = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
        sizes = [batch] * steps
    else:
        sizes = [int(b) for b in batch_sizes]

    def layer(index, x, dirs, h0, c0, keep, ln_dirs):
        return run_layer(cell, x, [w._asdict() for w in dirs], h0, c0, sizes, keep,
                         nonlinearity, ln_dirs)

    return run_layers(cell, input, h0, c0, params, has_biases, num_layers, dropout, train,
                      bidirectional, batch_first, batch_sizes, layer, zoneout_h=zoneout_h,
                      zoneout_c=zoneout_c, layer_norm=layer_norm)


def lstm(input: Tensor, hx: tuple[Tensor, Tensor], params, has_biases: bool, num_layers: int,
         dropout: float, train: bool, bidirectional: bool, batch_first: bool = False,
         batch_sizes: Tensor | None = None, *, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
         layer_norm=None):
    """Multi-layer LSTM. hx = (h0 [L*D, B, P], c0 [L*D, B, H]). Returns (output, h_n, c_n).

    layer_norm: the layer-normalised LSTM's parameters (module docstring), or None."""
    if layer_norm is not None:
        check_layer_norm_options(projection_size(hx), zoneout_h, zoneout_c)
    return _run_layers("lstm", input, hx[0], hx[1], params, has_biases, num_layers, dropout,
                       train, bidirectional, batch_first, batch_sizes, zoneout_h=zoneout_h,
                       zoneout_c=zoneout_c, layer_norm=layer_norm)


def gru(input: Tensor, hx: Tensor, params, has_biases: bool, num_layers: int, dropout: float,
        train: bool, bidirectional: bool, batch_first: bool = False,
        batch_sizes: Tensor | None = None, *, zoneout_h: float = 0.0):
    """Multi-layer GRU. hx [L*D, B, H]. Returns (output, h_n)."""
    return _run_layers("gru", input, hx, None, params, has_biases, num_layers, dropout, train,
                       bidirectional, batch_first, batch_sizes, zoneout_h=zoneout_h)


def rnn(input: Tensor, hx: Tensor, params, has_biases: bool, num_layers: int, dropout: float,
        train: bool, bidirectional: bool, batch_first: bool = False,
        batch_sizes: Tensor | None = None, nonlinearity: str = "tanh", *,
        zoneout_h: float = 0.0):
    """Multi-layer Elman RNN (tanh or relu). hx [L*D, B, H]. Returns (output, h_n)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return _run_layers("rnn", input, hx, None, params, has_biases, num_layers, dropout, train,
                       bidirectional, batch_first, batch_sizes, nonlinearity,
                       zoneout_h=zoneout_h)


# ---------------------------------------------------------------- int8 inference


def quantize_rows(a: Tensor) -> tuple[Tensor, Tensor]:
    """The run-time activation quantization of Note [int8 inference] (csrc/cpu/int8_isa.h),
    per row of a [M, K]: (a_q, integer values in a's dtype, and scale [M, 1]):
    scale = max|a| / 127, a_q = round_half_even(a * 127 / max|a|); a zero row gives a_q = 0,
    scale 0; a row with NaN or inf gives scale NaN."""
    peak = a.abs().amax(dim=1, keepdim=True)
    finite = torch.isfinite(peak)
    usable = finite & (peak > 0)
    divisor = torch.where(usable, peak, torch.ones_like(peak))
    a_q = torch.where(usable, torch.round(a * (127 / divisor)).clamp(-127, 127),
                      torch.zeros_like(a))
    scale = torch.where(finite, peak / 127, torch.full_like(peak, float("nan")))
    return a_q, scale


def quantized_linear(a: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None):
    """a [M, K] -> quantize_rows(a) times the int8 weight W_q [N, K] (row scales w_scale
    [N]), in a's dtype (float64: the integer sums are exact), + bias."""
    a_q, a_scale = quantize_rows(a)
    out = (a_q @ w_q.to(a.dtype).T) * a_scale * w_scale.to(a.dtype)
    return out if bias is None else out + bias.to(a.dtype)


def quantized_run_layer(cell: str, x: Tensor, dirs, h0: Tensor, c0: Tensor | None,
                        batch_sizes: list[int], nonlinearity: str = "tanh"):
    """run_layer with every product in int8 as rnnkernels' int8 modules compute it.

    dirs: per direction a dict of w_ih, w_hh, w_hr ((int8 weight, scale) pairs; w_hr None
    without projection) and b_ih, b_hh (None without biases). Returns what run_layer does.
    """
    directions = []
    for d, w in enumerate(dirs):
        def product(a, key, bias, w=w):
            return quantized_linear(a, *w[key], bias)

        if cell == "lstm":
            def step(x_t, h, c, w=w, product=product):
                gates = product(x_t, "w_ih", w["b_ih"]) + product(h, "w_hh", w["b_hh"])
                h_next, c_next = lstm_gates(gates, c)
                if w["w_hr"] is not None:
                    h_next = product(h_next, "w_hr", None)
                return h_next, c_next
            states = [h0[d], c0[d]]
        elif cell == "gru":
            def step(x_t, h, product=product, w=w):
                return (gru_gates(product(x_t, "w_ih", w["b_ih"]), product(h, "w_hh", w["b_hh"]),
                                  h),)
            states = [h0[d]]
        else:
            def step(x_t, h, product=product, w=w):
                pre = product(x_t, "w_ih", w["b_ih"]) + product(h, "w_hh", w["b_hh"])
                return (torch.relu(pre) if nonlinearity == "relu" else torch.tanh(pre),)
            states = [h0[d]]
        directions.append((step, states))
    return _run_directions(cell, x, directions, batch_sizes)
