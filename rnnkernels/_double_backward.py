"""The derivative of rnnkernels::rnn_layer_backward: gradients of gradients (a backward with
create_graph=True: gradient penalties, Hessian-vector products), on every device and mode.

Note [double backward]
rnn_layer's autograd Function (csrc/autograd.cpp) calls rnn_layer_backward below autograd
for an ordinary backward, and through autograd when the backward builds a graph; then the
kernels still compute the first-order gradients, and this registration differentiates
them. The backward op computes J(x, W, h0, c0)^T g, with the forward's output and workspace
as inputs that only save recomputation. Its derivative reruns the layer through
rnnkernels.reference (plain tensor ops, differentiable to any order) from x, the weights
and the states, takes the first-order gradients with create_graph=True and differentiates
those: d/d(x, W, h0, c0, g) of <J^T g, gg>. output and workspace get no gradient (their
dependence on x and W is inside the recompute). Each saved tensor first gets its own alias
(view_as), so that a tensor passed in two slots (tied weights) gets each slot's gradient,
and the recompute stays connected to the caller's graph (third and higher orders). The
cost is the reference's per-step speed, about torch.nn's own on CPU.
"""

from __future__ import annotations

import torch

from . import reference
from .ops import cell_of, weights_per_direction


def _directions(mode, x, weights, has_biases, has_projection, h0, c0):
    """rnn_layer's weights (csrc/host/layer.h's order) -> the reference's cell, per-direction
    dicts, LN dicts (or None) and nonlinearity."""
    cell, layer_norm = cell_of(mode), mode == "ln_lstm"
    per = weights_per_direction(mode, has_biases, has_projection)
    dirs, ln_dirs = [], []
    for d in range(len(weights) // per):
        taken = iter(weights[d * per:(d + 1) * per])
        w = dict(w_ih=next(taken), w_hh=next(taken))
        w["b_ih"], w["b_hh"] = (next(taken), next(taken)) if has_biases else (None, None)
        w["w_hr"] = next(taken) if has_projection else None
        dirs.append(w)
        if layer_norm:
            ln_dirs.append(dict(ih=next(taken), hh=next(taken), c_weight=next(taken),
                                c_bias=next(taken) if has_biases else None))
    nonlinearity = "relu" if mode == "rnn_relu" else "tanh"
    return cell, dirs, ln_dirs if layer_norm else None, nonlinearity


def _batch_sizes(x, h0, batch_sizes) -> list[int]:
    if batch_sizes is None:
        batch = h0.shape[1]
        return [batch] * (x.shape[0] // batch) if batch else []
    return [int(b) for b in batch_sizes]


def reference_layer(mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes, zoneout):
    """rnn_layer's (output, h_n, c_n or None) through rnnkernels.reference: differentiable
    to any order, in either mode of AD."""
    cell, dirs, ln_dirs, nonlinearity = _directions(mode, x, weights, has_biases,
                                                    has_projection, h0, c0)
    return reference.run_layer(cell, x, dirs, h0, c0, _batch_sizes(x, h0, batch_sizes),
                               zoneout, nonlinearity, ln_dirs=ln_dirs)


def _setup_context(ctx, inputs, output):
    (mode, x, weights, has_biases, has_projection, h0, c0, _output, _workspace, batch_sizes,
     zoneout, grad_output, grad_h_n, grad_c_n, need_input_grad) = inputs
    ctx.save_for_backward(x, h0, c0, grad_output, grad_h_n, grad_c_n, *weights)
    ctx.args = (mode, has_biases, has_projection, batch_sizes, zoneout, need_input_grad)


def backward_of_backward(mode, has_biases, has_projection, batch_sizes, zoneout,
                         need_input_grad, x, h0, c0, grad_output, grad_h_n, grad_c_n, weights,
                         gg_x, gg_weights, gg_h0, gg_c0):
    """The gradients of <rnn_layer_backward's results, gg> (Note [double backward]) with
    respect to x, the weights, h0, c0 and the three upstream gradients, each None where it
    has none: (grad_x, grad_weights, grad_h0, grad_c0, [grad_output's, grad_h_n's,
    grad_c_n's])."""
    higher_order = torch.is_grad_enabled()  # this backward itself builds a graph
    with torch.enable_grad():
        alias = lambda t: None if t is None else t.view_as(t)  # noqa: E731
        x_, h0_, c0_ = alias(x), alias(h0), alias(c0)
        weights_ = [alias(w) for w in weights]
        upstream_ = [alias(g) for g in (grad_output, grad_h_n, grad_c_n)]
        for t in (x_, h0_, c0_, *weights_, *upstream_):
            if t is not None and not t.requires_grad:
                t.requires_grad_(True)
        outputs = reference_layer(mode, x_, weights_, has_biases, has_projection, h0_, c0_,
                                  batch_sizes, zoneout)
        pairs = [(o, g) for o, g in zip(outputs, upstream_) if o is not None and g is not None]
        primals = [x_, *weights_, h0_] + ([c0_] if c0_ is not None else [])
        first = torch.autograd.grad([o for o, _ in pairs], primals, [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
        # first: the backward op's results (grad_x, grad_weights, grad_h0, grad_c0).
        gg = [gg_x if need_input_grad else None, *gg_weights, gg_h0]
        if c0_ is not None:
            gg.append(gg_c0)
        terms = [(f, g) for f, g in zip(first, gg)
                 if f is not None and g is not None and f.requires_grad]
        targets = primals + [g for g in upstream_ if g is not None]
        if terms:
            got = torch.autograd.grad([f for f, _ in terms], targets, [g for _, g in terms],
                                      create_graph=higher_order, allow_unused=True)
        else:
            got = [None] * len(targets)
    got = iter(got)
    grad_x = next(got)
    grad_weights = [next(got) for _ in weights_]
    grad_h0 = next(got)
    grad_c0 = next(got) if c0_ is not None else None
    grad_upstream = [next(got) if g is not None else None for g in upstream_]
    return grad_x, grad_weights, grad_h0, grad_c0, grad_upstream


def _backward(ctx, gg_x, gg_weights, gg_h0, gg_c0):
    mode, has_biases, has_projection, batch_sizes, zoneout, need_input_grad = ctx.args
    x, h0, c0, grad_output, grad_h_n, grad_c_n, *weights = ctx.saved_tensors
    grad_x, grad_weights, grad_h0, grad_c0, grad_upstream = backward_of_backward(
        mode, has_biases, has_projection, batch_sizes, zoneout, need_input_grad, x, h0, c0,
        grad_output, grad_h_n, grad_c_n, weights, gg_x, gg_weights, gg_h0, gg_c0)
    # One gradient per input of rnn_layer_backward: mode, x, weights, has_biases,
    # has_projection, h0, c0, output, workspace, batch_sizes, zoneout, grad_output, grad_h_n,
    # grad_c_n, need_input_grad.
    return (None, grad_x, grad_weights, None, None, grad_h0, grad_c0, None, None, None, None,
            *grad_upstream, None)


torch.library.register_autograd("rnnkernels::rnn_layer_backward", _backward,
                                setup_context=_setup_context)
