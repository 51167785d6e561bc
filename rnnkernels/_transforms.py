"""rnn_layer under torch.func transforms and forward-mode AD (Note [transforms]).

Note [transforms]
The op pair's autograd Function is C++ (csrc/autograd.cpp), which torch.func refuses
("cannot use C++ torch::autograd::Function with functorch transforms") and which has no
forward-mode derivative. So while a transform is active (grad, vjp, jacrev, jacfwd,
hessian, vmap) or a forward-AD tangent rides on an argument, functional.py calls
rnn_layer through RnnLayerTransformable below instead: the same kernels forward and
backward (rnn_layer, rnn_layer_backward), a Python autograd.Function that torch.func
accepts. Its vmap rule is generated from the op pair's batching rules (rnnkernels/_vmap.py,
Note [vmap rules]): vmap over the forward folds the vmapped dimension into the batch, and
per-sample gradients (vmap(grad(loss))) run the backward once per sample. Its backward is
RnnLayerBackwardTransformable: the BPTT kernels, whose own derivatives (second and higher
orders) recompute through rnnkernels.reference as double backward does (Note [double
backward] in _double_backward.py). Forward mode (jvp, jacfwd, hessian, a forward-AD
tangent) pushes the tangents through the reference's layer too: torch.func.jvp under a
transform, reverse mode twice inside a plain dual level (which cannot nest a level of its
own). Those recomputes run at the reference's speed. Ordinary calls keep the C++ Function.
"""

from __future__ import annotations

import torch

from . import _vmap  # noqa: F401  (registers the op pair's batching rules)
from . import ops
from ._double_backward import backward_of_backward, reference_layer


def _below_autograd():
    # The ops' own autograd kernels (the C++ Function, the registered double backward) are
    # not functorch-aware; inside these Functions the ops run below them.
    return torch._C._AutoDispatchBelowAutograd()


class RnnLayerTransformable(torch.autograd.Function):
    """ops.rnn_layer(mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes,
    zoneout, need_workspace=True), the weights last: apply(mode, x, has_biases,
    has_projection, h0, c0, batch_sizes, zoneout, *weights)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mode, x, has_biases, has_projection, h0, c0, batch_sizes, zoneout, *weights):
        with _below_autograd():
            return ops.rnn_layer(mode, x, list(weights), has_biases, has_projection, h0, c0,
                                 batch_sizes, zoneout, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mode, x, has_biases, has_projection, h0, c0, batch_sizes, zoneout, *weights = inputs
        out, _h_n, _c_n, workspace = output
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)
        ctx.args = (mode, has_biases, has_projection)
        ctx.save_for_backward(x, h0, c0, batch_sizes, zoneout, out, workspace, *weights)
        ctx.save_for_forward(x, h0, c0, batch_sizes, zoneout, *weights)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_workspace):
        mode, has_biases, has_projection = ctx.args
        x, h0, c0, batch_sizes, zoneout, out, workspace, *weights = ctx.saved_tensors
        lstm = mode in ops.LSTM_MODES
        if grad_output is None and grad_h_n is None and (grad_c_n is None or not lstm):
            return (None,) * (8 + len(weights))
        need_input_grad = ctx.needs_input_grad[1]
        grad_x, grad_h0, grad_c0, *grad_weights = RnnLayerBackwardTransformable.apply(
            mode, has_biases, has_projection, need_input_grad, x, h0, c0, out, workspace,
            batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n if lstm else None, *weights)
        return (None, grad_x if need_input_grad else None, None, None, grad_h0,
                grad_c0 if lstm else None, None, None, *grad_weights)

    @staticmethod
    def jvp(ctx, _mode, x_t, _has_biases, _has_projection, h0_t, c0_t, _batch_sizes,
            _zoneout, *weights_t):
        mode, has_biases, has_projection = ctx.args
        x, h0, c0, batch_sizes, zoneout, *weights = ctx.saved_tensors
        lstm = mode in ops.LSTM_MODES
        layer, primals = _reference_layer(mode, has_biases, has_projection, batch_sizes, zoneout,
                                          x, h0, c0, weights)
        tangents = _tangents(primals, [x_t, h0_t, *weights_t] + ([c0_t] if lstm else []))
        tangent_out = _jvp(layer, primals, tangents)
        out_t, h_n_t = tangent_out[:2]
        c_n_t = tangent_out[2] if lstm else h0.new_zeros((0,))  # the [0] placeholder
        return out_t, h_n_t, c_n_t, None


class RnnLayerBackwardTransformable(torch.autograd.Function):
    """ops.rnn_layer_backward with the weights last and the gradients flat:
    apply(mode, has_biases, has_projection, need_input_grad, x, h0, c0, output, workspace,
    batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n, *weights)
    -> (grad_x, grad_h0, grad_c0, *grad_weights). Its own derivatives (backward and jvp)
    recompute through the reference (Note [double backward])."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mode, has_biases, has_projection, need_input_grad, x, h0, c0, output, workspace,
                batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n, *weights):
        with _below_autograd():
            grad_x, grad_weights, grad_h0, grad_c0 = ops.rnn_layer_backward(
                mode, x, list(weights), has_biases, has_projection, h0, c0, output, workspace,
                batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n, need_input_grad)
        return (grad_x, grad_h0, grad_c0, *grad_weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (mode, has_biases, has_projection, need_input_grad, x, h0, c0, _output, _workspace,
         batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n, *weights) = inputs
        ctx.set_materialize_grads(False)
        ctx.args = (mode, has_biases, has_projection, need_input_grad)
        saved = (x, h0, c0, batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n, *weights)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, gg_x, gg_h0, gg_c0, *gg_weights):
        mode, has_biases, has_projection, need_input_grad = ctx.args
        (x, h0, c0, batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n,
         *weights) = ctx.saved_tensors
        grad_x, grad_weights, grad_h0, grad_c0, grad_upstream = backward_of_backward(
            mode, has_biases, has_projection, batch_sizes, zoneout, need_input_grad, x, h0, c0,
            grad_output, grad_h_n, grad_c_n, weights, gg_x, list(gg_weights), gg_h0, gg_c0)
        return (None, None, None, None, grad_x, grad_h0, grad_c0, None, None, None, None,
                *grad_upstream, *grad_weights)

    @staticmethod
    def jvp(ctx, _mode, _has_biases, _has_projection, _need_input_grad, x_t, h0_t, c0_t,
            _output_t, _workspace_t, _batch_sizes_t, _zoneout_t, grad_output_t, grad_h_n_t,
            grad_c_n_t, *weights_t):
        mode, has_biases, has_projection, need_input_grad = ctx.args
        (x, h0, c0, batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n,
         *weights) = ctx.saved_tensors
        lstm = mode in ops.LSTM_MODES
        layer, primals = _reference_layer(mode, has_biases, has_projection, batch_sizes, zoneout,
                                          x, h0, c0, weights)
        upstream = [grad_output, grad_h_n] + ([grad_c_n] if lstm else [])
        upstream_t = [grad_output_t, grad_h_n_t] + ([grad_c_n_t] if lstm else [])
        count = len(primals)

        present = [g is not None for g in upstream]
        inputs = (*primals, *[g for g in upstream if g is not None])
        tangents = _tangents(primals, [x_t, h0_t, *weights_t] + ([c0_t] if lstm else []))
        tangents += tuple(torch.zeros_like(g) if t is None else t
                          for g, t in zip(upstream, upstream_t) if g is not None)

        def gradients(*args):
            # The backward op's results from the primals and the given upstream gradients.
            results, pullback = torch.func.vjp(layer, *args[:count])
            given = iter(args[count:])
            cotangents = tuple(next(given) if p else torch.zeros_like(r)
                               for r, p in zip(results, present))
            return pullback(cotangents)

        grads_t = _jvp(gradients, inputs, tangents)
        # grads_t follows primals: x, h0, *weights, (c0).
        placeholder = h0.new_zeros((0,))  # grad_x without need_input_grad; GRU/RNN grad_c0
        grad_x_t = grads_t[0] if need_input_grad else placeholder
        grad_h0_t = grads_t[1]
        grad_weights_t = grads_t[2:2 + len(weights)]
        grad_c0_t = grads_t[-1] if lstm else placeholder
        return (grad_x_t, grad_h0_t, grad_c0_t, *grad_weights_t)


def _reference_layer(mode, has_biases, has_projection, batch_sizes, zoneout, x, h0, c0, weights):
    """(layer, primals): the reference layer as a function of primals = (x, h0, *weights,
    [c0]) returning (output, h_n, [c_n])."""
    lstm = mode in ops.LSTM_MODES
    count = len(weights)

    def layer(x, h0, *rest):
        out, h_n, c_n = reference_layer(mode, x, list(rest[:count]), has_biases, has_projection,
                                        h0, rest[count] if lstm else None, batch_sizes, zoneout)
        return (out, h_n, c_n) if lstm else (out, h_n)

    return layer, (x, h0, *weights) + ((c0,) if lstm else ())


def _jvp(f, primals, tangents):
    """torch.func.jvp(f, primals, tangents)'s tangents. Inside a plain forward-AD dual level
    torch.func.jvp cannot nest a level of its own, so there they come from reverse mode
    twice: J t = d/du <J^T u, t> at u = 0 (J^T u is linear in u)."""
    if torch._C._are_functorch_transforms_active():
        return torch.func.jvp(f, primals, tangents)[1]
    with torch.enable_grad():
        inputs = [p.detach().requires_grad_() for p in primals]
        outputs = f(*inputs)
        probes = [torch.zeros_like(o, requires_grad=True) for o in outputs]
        pulled = torch.autograd.grad(outputs, inputs, probes, create_graph=True,
                                     allow_unused=True)
        terms = [(g, t) for g, t in zip(pulled, tangents) if g is not None and g.requires_grad]
        pushed = torch.autograd.grad([g for g, _ in terms], probes, [t for _, t in terms],
                                     allow_unused=True) if terms else [None] * len(probes)
    return tuple(torch.zeros_like(o) if t is None else t for o, t in zip(outputs, pushed))


def _tangents(primals, tangents) -> tuple:
    return tuple(torch.zeros_like(p) if t is None else t for p, t in zip(primals, tangents))


def rnn_layer(mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes, zoneout,
              need_workspace=True):
    """ops.rnn_layer, differentiable under torch.func and forward AD (it always keeps the
    workspace: whether a transform will differentiate is not known here)."""
    return RnnLayerTransformable.apply(mode, x, has_biases, has_projection, h0, c0, batch_sizes,
                                       zoneout, *weights)
