"""What rnnkernels.functional (the kernels' path) and rnnkernels.reference (the executable
specification) share: the parsing of the flat weight lists, the layer-norm and zoneout
options, the zoneout draws, and the loop over layers. Neither imports the other for these.

Shapes: input [T, B, I] (or [B, T, I] with batch_first) or a PackedSequence's data [N, I];
inside the loop a layer sees x [N, I] in rows layout (N = T*B, time-major), h0 [D, B, P]
and c0 [D, B, H] of its D directions, and returns its output [N, D*P], h_n and c_n.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LAYER_NORM_EPS = 1e-5


class DirectionWeights(NamedTuple):
    """One direction of one layer: w_ih [G*H, I], w_hh [G*H, P], b_ih, b_hh [G*H] (None
    without biases), w_hr [P, H] (None without a projection)."""
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None


def split_weights(params, has_biases: bool, num_layers: int,
                  directions: int) -> list[list[DirectionWeights]]:
    """A module's _flat_weights (per layer and direction: w_ih, w_hh, [b_ih, b_hh], [w_hr])
    -> [layer][direction] DirectionWeights."""
    per = len(params) // (num_layers * directions)
    expected = (2 + 2 * int(has_biases), 3 + 2 * int(has_biases))
    if per not in expected or per * num_layers * directions != len(params):
        raise RuntimeError(
            f"rnnkernels: expected {expected[0]} or {expected[1]} parameters per layer and "
            f"direction ({num_layers} layers x {directions} directions), got {len(params)} in all")
    has_proj = per == expected[1]
    layers = []
    for layer in range(num_layers):
        dirs = []
        for d in range(directions):
            p = params[(layer * directions + d) * per:(layer * directions + d + 1) * per]
            dirs.append(DirectionWeights(p[0], p[1], p[2] if has_biases else None,
                                         p[3] if has_biases else None,
                                         p[-1] if has_proj else None))
        layers.append(dirs)
    return layers


def split_layer_norm(layer_norm, has_biases: bool, num_layers: int, directions: int):
    """The flat layer-norm parameter list -> [layer][direction] dicts with ih, hh, c_weight,
    c_bias (None without biases)."""
    per = 3 + int(has_biases)
    if len(layer_norm) != per * num_layers * directions:
        raise RuntimeError(f"layer_norm: expected {per} parameters per layer and direction "
                           f"({num_layers} layers x {directions} directions), got "
                           f"{len(layer_norm)}")
    layers = []
    for layer in range(num_layers):
        dirs = []
        for d in range(directions):
            p = layer_norm[(layer * directions + d) * per:(layer * directions + d + 1) * per]
            dirs.append(dict(ih=p[0], hh=p[1], c_weight=p[2],
                             c_bias=p[3] if has_biases else None))
        layers.append(dirs)
    return layers


def check_layer_norm_options(proj_size: int, zoneout_h: float, zoneout_c: float) -> None:
    """The layer-normalised LSTM has neither a projection nor zoneout (ValueError)."""
    if proj_size or zoneout_h or zoneout_c:
        raise ValueError("layer_norm=True supports neither proj_size nor zoneout, got "
                         f"proj_size={proj_size}, zoneout_h={zoneout_h}, zoneout_c={zoneout_c}")


def projection_size(hx: tuple[Tensor, Tensor]) -> int:
    """proj_size of an LSTM from its state (h0 [.., P], c0 [.., H]): P when P != H, else 0."""
    return hx[0].shape[-1] if hx[0].shape[-1] != hx[1].shape[-1] else 0


def zoneout_weights(p_h: float, p_c: float | None, directions: int, rows: int, out_size: int,
                    hidden: int, train: bool, like: Tensor) -> Tensor | None:
    """The weights of the previous state for one layer's zoneout, or None without zoneout.

    Shape [D, N, P] (GRU, RNN: p_c is None) or [D, N, P+H] (LSTM: P columns for h, then H
    for c). Training: Bernoulli(p) draws, 1 keeping the previous value, as one float32
    ``torch.rand`` over the whole [D, N, width] block (torch's default generator; the same
    draws whatever the dtype) compared with each column's p: about twice as fast as
    ``bernoulli_``, the draws being most of zoneout's cost. Evaluation: p itself, the
    expectation, as one row broadcast over all rows (row stride 0: no memory per row).
    run_layers draws with it per layer, before the layer runs, for the kernels and the
    reference alike, so one seed gives both the same draws.
    """
    has_cell = p_c is not None
    p_c = p_c if has_cell else 0.0
    if p_h == 0 and p_c == 0:
        return None

    def probabilities(dtype):
        opts = dict(dtype=dtype, device=like.device)
        return torch.cat([torch.full((out_size,), p_h, **opts),
                          torch.full((hidden if has_cell else 0,), p_c, **opts)])

    if not train:
        row = probabilities(like.dtype)
        return row.expand(directions, rows, row.numel())
    row = probabilities(torch.float32)
    uniform = torch.rand(directions, rows, row.numel(), dtype=torch.float32, device=like.device)
    return uniform.lt_(row).to(like.dtype)


# run_layer(layer, x [N, I], dirs, h0 [D, B, P], c0 [D, B, H] or None, zoneout [D, N, W] or
# None, ln_dirs or None) -> (output [N, D*P], h_n [D, B, P], c_n [D, B, H] or None)
LayerRunner = Callable[..., tuple]


def run_layers(cell: str, input: Tensor, h0: Tensor, c0: Tensor | None, params,
               has_biases: bool, num_layers: int, dropout: float, train: bool,
               bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None,
               run_layer: LayerRunner, zoneout_h: float = 0.0, zoneout_c: float | None = None,
               layer_norm=None):
    """The loop over layers, once for the kernels and the reference: the rows layout, the
    zoneout draws per layer, dropout between layers (``F.dropout(p, training=True)`` on the
    layer output [N, D*P], not after the last), and the results' layout. Returns (output,
    h_n) or, for the LSTM, (output, h_n, c_n)."""
    directions = 2 if bidirectional else 1
    layers = split_weights(params, has_biases, num_layers, directions)
    ln_layers = (split_layer_norm(layer_norm, has_biases, num_layers, directions)
                 if layer_norm is not None else [None] * num_layers)
    if batch_sizes is None:
        seq = input.transpose(0, 1) if batch_first else input  # [T, B, I]
        steps, batch = seq.shape[0], seq.shape[1]
        x = seq.reshape(steps * batch, seq.shape[2])
    else:
        x = input
    h_n, c_n = [], []
    for layer, dirs in enumerate(layers):
        first, last = layer * directions, (layer + 1) * directions
        layer_h0 = h0[first:last]
        layer_c0 = c0[first:last] if c0 is not None else None
        zoneout = zoneout_weights(zoneout_h, zoneout_c, directions, x.shape[0], h0.shape[2],
                                  h0.shape[2] if c0 is None else c0.shape[2], train, x)
        x, h_last, c_last = run_layer(layer, x, dirs, layer_h0, layer_c0, zoneout,
                                      ln_layers[layer])
        h_n.append(h_last)
        c_n.append(c_last)
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    if batch_sizes is None:
        output = x.view(steps, batch, x.shape[1])
        if batch_first:
            output = output.transpose(0, 1)
    else:
        output = x
    h_n = h_n[0] if len(h_n) == 1 else torch.cat(h_n, 0)
    if cell == "lstm":
        c_n = c_n[0] if len(c_n) == 1 else torch.cat(c_n, 0)
        return output, h_n, c_n
    return output, h_n
