"""Functional forms of the recurrent layers and cells, running the rnnkernels ops.

The layer functions take the arguments of ``torch._VF.lstm`` / ``gru`` / ``rnn_tanh``:
``params`` is the module's ``_flat_weights`` list (per layer and direction: w_ih, w_hh,
[b_ih, b_hh], [w_hr]), ``hx`` has shape [num_layers * directions, batch, size], and
``input`` is time-major [T, B, I] (or batch-major with ``batch_first``), or the data of
a PackedSequence [N, I] with its ``batch_sizes``.

Per layer: one GEMM projects the input of all steps for both directions (bias b_ih
included), then one op runs the recurrence over the whole sequence. Inputs the kernels
do not cover (a device without rnnkernels kernels, a dtype other than float32/float64
on CPU) run torch's own implementation, so results never depend on what was built.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, _VF

from . import _layers, _onnx_graphs, _transforms, ops
from . import reference  # the fallback for what neither the kernels nor torch run
from .backends import cpu as _cpu_backend
from ._ext import _C

def _capabilities():
    """The dtypes the ops take per device, as the build reports them (_C.build_info(): on
    CPU the ones the kernels run natively and those the ops widen to float32 first)."""
    info = _C.build_info()
    cpu = (*info["cpu_dtypes"], *info["cpu_widened_dtypes"])
    cuda = info["cuda"]["dtypes"] if info.get("cuda") else ()
    return (tuple(getattr(torch, n) for n in cpu), tuple(getattr(torch, n) for n in cuda))


_CPU_DTYPES, _CUDA_DTYPES = _capabilities()


def kernels_support(x: Tensor) -> bool:
    """Whether rnnkernels has kernels for tensors like x (device and dtype)."""
    if x.device.type == "cpu":
        return x.dtype in _CPU_DTYPES
    if x.device.type == "cuda":
        return x.dtype in _CUDA_DTYPES
    return False


# Private torch APIs (present since torch 2.0); should one go away, assume the mode may be
# on and check the tensors / run torch's implementation rather than fail every call.
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def _transformed(*tensors) -> bool:
    """A torch.func transform is active, or a forward-AD tangent rides on one of `tensors`:
    the C++ autograd Function cannot serve the call (Note [transforms])."""
    if torch.compiler.is_compiling():
        return False
    if _functorch_active():
        return True
    return _dual_level_active() and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _layer_op(*tensors):
    """rnn_layer, or its transformable form while a transform or tangent needs it."""
    return _transforms.rnn_layer if _transformed(*tensors) else _rnn_layer


def _dual_level_active() -> bool:
    """Inside a forward-AD dual level (or the level cannot be read)."""
    return getattr(forward_ad, "_current_level", 0) >= 0


def plain_cpu_call() -> bool:
    """No mode that changes how a CPU call must run: autocast, a torch.func transform, a
    forward-mode AD level, or torch.compile tracing (the cells' fast path)."""
    # Any device's autocast (not just CPU's): its check costs a third of is_autocast_enabled("cpu").
    return (not _dual_level_active() and not _functorch_active()
            and not torch._C._is_any_autocast_enabled() and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def _needs_grad(*tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def _layer_range(cell: str, layer: int):
    """A profiler range per layer ("rnnkernels.lstm.layer0"), only while a profiler runs.

    Under torch.compile the check is skipped: dynamo cannot trace _profiler_enabled().
    """
    if not torch.compiler.is_compiling() and torch.autograd._profiler_enabled():
        return torch.profiler.record_function(f"rnnkernels.{cell}.layer{layer}")
    return contextlib.nullcontext()


# Note [routing]
# Who runs a functional call, decided in two places of this module and nowhere else:
#  1. _routed (the entry points' wrapper): under torch.jit.trace, torch's own
#     implementation (Note [tracing]); on CPU, the engine choice (Note [engine choice] in
#     backends.py), which may pick torch's implementation; then autocast (Note [autocast]).
#  2. _route (the entry points' bodies, after autocast's casts): our kernels where they
#     take input's device and dtype (kernels_support; under torch.func transforms and
#     forward-mode AD too, Note [transforms]) and the call fits them, else torch's
#     implementation, else the reference for options torch lacks (zoneout, the
#     layer-normalised LSTM; the reference is production code only as this fallback).
def _route(input: Tensor, *, fits_kernels: bool = True, torch_runs: bool = True) -> str:
    """"kernels", "torch" or "reference" (Note [routing])."""
    if fits_kernels and kernels_support(input):
        return "kernels"
    return "torch" if torch_runs else "reference"


def _torch_has_options(zoneout_h: float = 0.0, zoneout_c: float = 0.0, layer_norm=None,
                       **_) -> bool:
    """Whether torch's implementation has every option of a call: no zoneout, no layer norm."""
    return not (zoneout_h or zoneout_c or layer_norm is not None)


def _mode(cell: str, nonlinearity: str, layer_norm: bool) -> str:
    """rnn_layer's mode (csrc/host/layer.h)."""
    if cell == "lstm":
        return "ln_lstm" if layer_norm else "lstm"
    return "gru" if cell == "gru" else "rnn_" + nonlinearity


def _layer_weights(dirs, has_biases: bool, ln_dirs) -> list[Tensor]:
    """rnn_layer's weights: per direction w_ih, w_hh, [b_ih, b_hh], [w_hr], then the
    layer-normalised LSTM's ih, hh, c_weight, [c_bias] (torch.nn's _flat_weights order)."""
    weights = []
    for d, w in enumerate(dirs):
        weights += (w.w_ih, w.w_hh)
        if has_biases:
            weights += (w.b_ih, w.b_hh)
        if w.w_hr is not None:
            weights.append(w.w_hr)
        if ln_dirs is not None:
            ln = ln_dirs[d]
            weights += (ln["ih"], ln["hh"], ln["c_weight"])
            if has_biases:
                weights.append(ln["c_bias"])
    return weights


def _run_layer(cell, x, dirs, has_biases, h0, c0, batch_sizes, nonlinearity, need_workspace,
               zoneout=None, ln_dirs=None):
    """One layer, both directions, as one rnn_layer call; the host decides how x is
    projected (csrc/host/layer.h).

    zoneout: the layer's zoneout weights [D, N, P(+H)] (_layers.zoneout_weights) or None.
    ln_dirs: the layer-normalised LSTM's parameters per direction (_layers.split_layer_norm).
    """
    weights = _layer_weights(dirs, has_biases, ln_dirs)
    out, h_n, c_n, _ = _layer_op(x, h0, c0, *weights)(
        _mode(cell, nonlinearity, ln_dirs is not None), x, weights, has_biases,
        dirs[0].w_hr is not None, h0, c0, batch_sizes, zoneout, need_workspace)
    return out, h_n, c_n if cell == "lstm" else None


def _run_layers(cell, input, hx, cx, params, has_biases, num_layers, dropout, train,
                bidirectional, batch_first, batch_sizes, nonlinearity="tanh", zoneout_h=0.0,
                zoneout_c=None, layer_norm=None):
    need_workspace = _needs_grad(input, hx, cx, *params, *(layer_norm or ()))

    def layer(index, x, dirs, h0, c0, zoneout, ln_dirs):
        with _layer_range(cell, index):
            return _run_layer(cell, x, dirs, has_biases, h0, c0, batch_sizes, nonlinearity,
                              need_workspace, zoneout, ln_dirs)

    return _layers.run_layers(cell, input, hx, cx, params, has_biases, num_layers, dropout,
                              train, bidirectional, batch_first, batch_sizes, layer,
                              zoneout_h=zoneout_h, zoneout_c=zoneout_c, layer_norm=layer_norm)


# ---------------------------------------------------------------- autocast

# Note [autocast]
# Under torch.autocast torch.nn's recurrent modules compute their products in the autocast
# dtype; what they return depends on the cell, path and device. CPU (torch 2.13,
# bfloat16): a dense LSTM without projection runs oneDNN (mkldnn_rnn_layer is on the
# autocast list) and returns the autocast dtype; RNN and RNNCell (their linear products
# are) too; GRU, GRUCell, LSTMCell and the other LSTMs (packed or with proj_size: torch's
# native path) return float32, because their gate math combines the low-precision
# products with the float32 state, except that an LSTM with projection returns output
# and h_n from its last product, in the autocast dtype (c_n stays float32). CUDA: every
# cell returns the autocast dtype (cuDNN's RNN and the cells are on the list). We do the
# same: float32 tensors are cast to the autocast dtype, our kernels run with autocast off
# (products with float32 accumulation, as for bfloat16/float16 input), and the results are
# cast to the dtype torch.nn would return. float64 input is left alone, as autocast does.
_CPU_AUTOCAST_LOW_PRECISION_RESULT = {"rnn", "rnn_cell"}


def _autocast_result_dtypes(cell: str, device: str, low: torch.dtype, args, kwargs) -> tuple:
    """Dtypes of (output, h_n[, c_n]) or of a cell's results under autocast."""
    if device == "cuda" or cell in _CPU_AUTOCAST_LOW_PRECISION_RESULT:
        return (low,)
    if cell != "lstm":
        return (torch.float32,)
    h0, c0 = args[0]
    packed = (kwargs["batch_sizes"] if "batch_sizes" in kwargs
              else args[8] if len(args) > 8 else None) is not None
    projection = h0.shape[-1] != c0.shape[-1]
    if not packed and not projection:
        return (low,)  # oneDNN
    state = low if projection else torch.float32
    return (state, state, torch.float32)


def _cast_tree(value, dtype):
    if isinstance(value, Tensor):
        return value.to(dtype) if value.dtype == torch.float32 and dtype != value.dtype else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_tree(v, dtype) for v in value)
    return value


# ---------------------------------------------------------------- engine choice

def _torch_layers(impl):
    """torch's layer call (_VF.lstm, gru, rnn_tanh, rnn_relu) with the functional signature."""
    def run(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
            batch_first=False, batch_sizes=None, **options):
        if batch_sizes is None:
            return impl(input, hx, params, has_biases, num_layers, dropout, train,
                        bidirectional, batch_first)
        return impl(input, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                    bidirectional)
    return run


_torch_lstm = _torch_layers(_VF.lstm)
_torch_gru = _torch_layers(_VF.gru)
_TORCH_RNN = {"tanh": _torch_layers(_VF.rnn_tanh), "relu": _torch_layers(_VF.rnn_relu)}


def _torch_rnn(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
               batch_first=False, batch_sizes=None, nonlinearity="tanh", **options):
    return _TORCH_RNN[nonlinearity](input, hx, params, has_biases, num_layers, dropout, train,
                                    bidirectional, batch_first, batch_sizes)


def _torch_rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    impl = _VF.rnn_tanh_cell if nonlinearity == "tanh" else _VF.rnn_relu_cell
    return impl(input, hx, w_ih, w_hh, b_ih, b_hh)


# torch's engine per cell, with the functional signature (torch.nn's own calls).
_TORCH_ENGINES = {"lstm": _torch_lstm, "gru": _torch_gru, "rnn": _torch_rnn,
                  "lstm_cell": _VF.lstm_cell, "gru_cell": _VF.gru_cell,
                  "rnn_cell": _torch_rnn_cell}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1, "lstm_cell": 4, "gru_cell": 3, "rnn_cell": 1}


def _engine_key(cell: str, input: Tensor, w_hh: Tensor, dtype: str, training: bool, *,
                batch_first=False, batch_sizes=None, num_layers=1, bidirectional=False):
    """The key of Note [engine choice] in rnnkernels/backends.py (EngineKey's fields)."""
    hidden = w_hh.shape[0] // _GATES[cell]
    proj = w_hh.shape[1] if w_hh.shape[1] != hidden else 0
    mode = "training" if training else "inference"
    if batch_sizes is not None:
        steps, batch, packed = batch_sizes.shape[0], int(batch_sizes[0]), True
    elif input.dim() == 2:  # a cell's [B, I]
        steps, batch, packed = 1, input.shape[0], False
    else:
        steps, batch = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
        packed = False
    return (cell, dtype, mode, steps, batch, input.shape[-1], hidden, num_layers,
            2 if bidirectional else 1, proj, packed, torch.get_num_threads())


def _choose_torch(cell, key, run_ours, run_torch, tensors) -> bool:
    leaves = ()
    if _cpu_backend.benchmark and key[2] == "training":
        leaves = tuple(t for t in tensors if t is not None and t.requires_grad)
    return _cpu_backend.choose(key, run_ours, run_torch, leaves) == "torch"


def cell_step(cell: str, hidden_size: int, args: tuple, tensor_count: int):
    """The modules' cell fast path (checked [B, I] CPU input, plain mode): one step on the
    engine the choice names. args: (input, *states, w_ih, w_hh, b_ih, b_hh[, nonlinearity]),
    the first tensor_count of them tensors or None. Kept lean, it runs on every step of a
    cell loop: the lambdas for timing are made only when benchmark is on."""
    ours, theirs = _CELL_STEPS[cell]
    backend = _cpu_backend
    engine = backend._engine
    if engine == "rnnkernels":
        return ours(*args)
    training = False
    if torch.is_grad_enabled():
        for index in range(tensor_count):
            t = args[index]
            if t is not None and t.requires_grad:
                training = True
                break
    input = args[0]
    shape = input.shape
    key = (cell, _DTYPE_NAMES[input.dtype], "training" if training else "inference", 1,
           shape[0], shape[1], hidden_size, 1, 1, 0, False, torch.get_num_threads())
    if backend.benchmark:
        leaves = tuple(t for t in args[:tensor_count] if t is not None and t.requires_grad)
        choice = backend.choose(key, lambda: ours(*args), lambda: theirs(*args), leaves)
    else:
        choice = backend.choose(key)
    return theirs(*args) if choice == "torch" else ours(*args)


_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64",
                torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _routable(input) -> bool:
    """A CPU call both engines can run and the engine choice may route (Note [engine
    choice]): plain input of a kernel dtype, no torch.func transform, forward-mode AD or
    torch.compile tracing (those keep their routes)."""
    return (_cpu_backend.engine != "rnnkernels" and type(input) is Tensor
            and input.device.type == "cpu" and input.dtype in _DTYPE_NAMES
            and not torch.compiler.is_compiling() and not _functorch_active()
            and not _dual_level_active())


# Note [tracing]
# Under torch.jit.trace (and so torch.onnx.export(dynamo=False), which traces) the layers
# and cells run torch's own implementation, _VF.lstm / gru / rnn_tanh / rnn_relu and the
# cell ops, whatever the engine choice says: the trace then holds the aten RNN ops that
# torch.nn's trace holds, which pass the tracer's sanity check (the engine choice reads
# sizes the tracer turns into constants), run in LibTorch without our op library, and
# export to ONNX's native LSTM/GRU/RNN ops. The traced model computes torch.nn's results
# (our kernels agree with them within the equivalence tolerances). Options torch.nn lacks
# (zoneout, the layer-normalised LSTM) keep their own path.
def _routed(cell: str):
    """The functional entry of a cell: the engine choice on CPU (torch's engine runs the
    call as torch.nn would, autocast included), then autocast (Note [autocast])."""
    def wrap(fn):
        # Positions of the arguments the key reads (args excludes input).
        position = {name: index - 1 for index, name in enumerate(inspect.signature(fn).parameters)}
        torch_engine = _TORCH_ENGINES[cell]
        is_step = cell.endswith("_cell")

        def argument(args, kwargs, name, default=None):
            index = position[name]
            return args[index] if index < len(args) else kwargs.get(name, default)

        @functools.wraps(fn)
        def run(input, *args, **kwargs):
            # Options torch's implementation lacks keep our path whatever the engine.
            torch_can_run = _torch_has_options(**kwargs)
            if _onnx_graphs.in_onnx_export():
                # Note [ONNX export] in _onnx_graphs.py.
                if not is_step and _onnx_graphs.needs_loop(_has_projection(cell, args, kwargs),
                                                           **kwargs):
                    return _onnx_graphs.export_layers(cell, input, *args, **kwargs)
                if torch_can_run:
                    return torch_engine(input, *args, **kwargs)
            if torch_can_run and torch.jit.is_tracing():
                # Note [tracing]: a trace records torch's own RNN ops, as torch.nn's does.
                return torch_engine(input, *args, **kwargs)
            if torch_can_run and _routable(input):
                hx = argument(args, kwargs, "hx")
                hx = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
                if is_step:
                    weights = tuple(argument(args, kwargs, n) for n in ("w_ih", "w_hh", "b_ih", "b_hh"))
                    w_hh = weights[1]
                    layout = {}
                else:
                    weights = argument(args, kwargs, "params")
                    w_hh = weights[1] if len(weights) >= 2 else None
                    layout = dict(batch_first=argument(args, kwargs, "batch_first", False),
                                  batch_sizes=argument(args, kwargs, "batch_sizes"),
                                  num_layers=argument(args, kwargs, "num_layers"),
                                  bidirectional=argument(args, kwargs, "bidirectional"))
                nonlinearity = (argument(args, kwargs, "nonlinearity", "tanh")
                                if "nonlinearity" in position else "tanh")
                if isinstance(w_hh, Tensor) and nonlinearity in ("tanh", "relu"):
                    autocast = input.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
                    dtype = (f"autocast_{_DTYPE_NAMES[torch.get_autocast_dtype('cpu')]}"
                             if autocast else _DTYPE_NAMES[input.dtype])
                    tensors = (input, *hx, *weights)
                    key = _engine_key(cell, input, w_hh, dtype, _needs_grad(*tensors), **layout)

                    def run_ours():
                        with _cpu_backend.flags(engine="rnnkernels"):
                            return run(input, *args, **kwargs)

                    def run_torch():
                        return torch_engine(input, *args, **kwargs)

                    if _choose_torch(cell, key, run_ours, run_torch, tensors):
                        return torch_engine(input, *args, **kwargs)
            return _autocast(cell, fn, input, args, kwargs)
        return run
    return wrap


def _has_projection(cell: str, args, kwargs) -> bool:
    """An LSTM layer call's h0 and c0 differ in width (proj_size)."""
    if cell != "lstm":
        return False
    hx = args[0] if args else kwargs["hx"]
    return _layers.projection_size(tuple(hx)) > 0


def _autocast(cell: str, fn, input, args, kwargs):
    device = input.device.type
    if (device not in ("cpu", "cuda") or input.dtype != torch.float32
            or not torch.is_autocast_enabled(device)):
        return fn(input, *args, **kwargs)
    low = torch.get_autocast_dtype(device)
    dtypes = _autocast_result_dtypes(cell, device, low, args, kwargs)
    with torch.autocast(device, enabled=False):
        result = fn(_cast_tree(input, low), *_cast_tree(args, low),
                    **{k: _cast_tree(v, low) for k, v in kwargs.items()})
    if isinstance(result, Tensor):
        return result.to(dtypes[0])
    return tuple(r.to(dtypes[min(i, len(dtypes) - 1)]) for i, r in enumerate(result))


@_routed("lstm")
def lstm(input: Tensor, hx: tuple[Tensor, Tensor], params: list[Tensor], has_biases: bool,
         num_layers: int, dropout: float, train: bool, bidirectional: bool,
         batch_first: bool = False, batch_sizes: Tensor | None = None, *,
         zoneout_h: float = 0.0, zoneout_c: float = 0.0, layer_norm: list[Tensor] | None = None):
    """Multi-layer LSTM. Returns (output, h_n, c_n) like torch._VF.lstm.

    zoneout_h, zoneout_c (beyond torch._VF): zoneout probabilities of h and c, applied in
    the kernels (Note [zoneout] in csrc/include/rnnkernels/cell_math.h); the weights are
    drawn by _layers.zoneout_weights, Bernoulli when ``train``, else their expectation.
    layer_norm (beyond torch._VF): the layer-normalised LSTM's parameters, per layer and
    direction the LayerNorm weights of the input product [4H], of the recurrent product
    [4H] and of the cell state [H], then the cell state's LayerNorm bias [H] when
    has_biases (rnnkernels.reference); not with zoneout or a projection.
    """
    if layer_norm is not None:
        _layers.check_layer_norm_options(_layers.projection_size(hx), zoneout_h, zoneout_c)
    route = _route(input, torch_runs=_torch_has_options(zoneout_h, zoneout_c, layer_norm))
    if route == "torch":
        return _torch_lstm(input, hx, params, has_biases, num_layers, dropout, train,
                           bidirectional, batch_first, batch_sizes)
    if route == "reference":
        return reference.lstm(input, hx, params, has_biases, num_layers, dropout, train,
                              bidirectional, batch_first, batch_sizes, zoneout_h=zoneout_h,
                              zoneout_c=zoneout_c, layer_norm=layer_norm)
    return _run_layers("lstm", input, hx[0], hx[1], params, has_biases, num_layers, dropout,
                       train, bidirectional, batch_first, batch_sizes, zoneout_h=zoneout_h,
                       zoneout_c=zoneout_c, layer_norm=layer_norm)


@_routed("gru")
def gru(input: Tensor, hx: Tensor, params: list[Tensor], has_biases: bool, num_layers: int,
        dropout: float, train: bool, bidirectional: bool, batch_first: bool = False,
        batch_sizes: Tensor | None = None, *, zoneout_h: float = 0.0):
    """Multi-layer GRU. Returns (output, h_n) like torch._VF.gru; zoneout_h as in lstm."""
    route = _route(input, torch_runs=_torch_has_options(zoneout_h))
    if route == "torch":
        return _torch_gru(input, hx, params, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first, batch_sizes)
    if route == "reference":
        return reference.gru(input, hx, params, has_biases, num_layers, dropout, train,
                             bidirectional, batch_first, batch_sizes, zoneout_h=zoneout_h)
    return _run_layers("gru", input, hx, None, params, has_biases, num_layers, dropout, train,
                       bidirectional, batch_first, batch_sizes, zoneout_h=zoneout_h)


@_routed("rnn")
def rnn(input: Tensor, hx: Tensor, params: list[Tensor], has_biases: bool, num_layers: int,
        dropout: float, train: bool, bidirectional: bool, batch_first: bool = False,
        batch_sizes: Tensor | None = None, nonlinearity: str = "tanh", *,
        zoneout_h: float = 0.0):
    """Multi-layer Elman RNN (tanh or relu). Returns (output, h_n) like torch._VF.rnn_tanh;
    zoneout_h as in lstm."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    route = _route(input, torch_runs=_torch_has_options(zoneout_h))
    if route == "torch":
        return _torch_rnn(input, hx, params, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first, batch_sizes, nonlinearity)
    if route == "reference":
        return reference.rnn(input, hx, params, has_biases, num_layers, dropout, train,
                             bidirectional, batch_first, batch_sizes, nonlinearity,
                             zoneout_h=zoneout_h)
    return _run_layers("rnn", input, hx, None, params, has_biases, num_layers, dropout, train,
                       bidirectional, batch_first, batch_sizes, nonlinearity,
                       zoneout_h=zoneout_h)


# ---------------------------------------------------------------- cells


def _kernel_cell(w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> bool:
    """Whether a cell call suits the kernels. A cell of hidden_size 0 (torch.nn accepts it
    and returns [B, 0]) runs torch's cell op: the kernels take the hidden size from W_hh
    [G*H, H], which is [0, 0] then; so does a call with one bias of the two."""
    return w_hh.shape[0] != 0 and (b_ih is None) == (b_hh is None)


# One cell step as one rnn_layer call on [B, I] input: the functional cells' kernel path
# and the modules' fast path (nn.py: _CellForward._fast_cell_weights has checked the
# arguments and the modes).
_rnn_layer = torch.ops.rnnkernels.rnn_layer.default


def _cell_weights(w_ih, w_hh, b_ih, b_hh) -> list[Tensor]:
    return [w_ih, w_hh] if b_ih is None else [w_ih, w_hh, b_ih, b_hh]


def lstm_cell_kernel(input, h, c, w_ih, w_hh, b_ih, b_hh, layer=_rnn_layer):
    need = _needs_grad(input, h, c, w_ih, w_hh, b_ih, b_hh)
    _, h_n, c_n, _ = layer("lstm", input, _cell_weights(w_ih, w_hh, b_ih, b_hh),
                                b_ih is not None, False, h.unsqueeze(0), c.unsqueeze(0), None,
                                None, need)
    return h_n[0], c_n[0]


def gru_cell_kernel(input, h, w_ih, w_hh, b_ih, b_hh, layer=_rnn_layer):
    need = _needs_grad(input, h, w_ih, w_hh, b_ih, b_hh)
    return layer("gru", input, _cell_weights(w_ih, w_hh, b_ih, b_hh), b_ih is not None,
                      False, h.unsqueeze(0), None, None, None, need)[1][0]


def rnn_cell_kernel(input, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, layer=_rnn_layer):
    need = _needs_grad(input, h, w_ih, w_hh, b_ih, b_hh)
    return layer("rnn_" + nonlinearity, input, _cell_weights(w_ih, w_hh, b_ih, b_hh),
                      b_ih is not None, False, h.unsqueeze(0), None, None, None, need)[1][0]


def _torch_lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh):
    return _VF.lstm_cell(input, (h, c), w_ih, w_hh, b_ih, b_hh)


# cell_step's engines: (ours, torch's), each taking cell_step's args.
_CELL_STEPS = {"lstm_cell": (lstm_cell_kernel, _torch_lstm_cell),
               "gru_cell": (gru_cell_kernel, _VF.gru_cell),
               "rnn_cell": (rnn_cell_kernel, _torch_rnn_cell)}


@_routed("lstm_cell")
def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None):
    """One LSTM step on batched input [B, I] with hx = (h [B, H], c [B, H]). Returns (h', c')."""
    h, c = hx
    if _route(input, fits_kernels=_kernel_cell(w_hh, b_ih, b_hh)) == "torch":
        return _VF.lstm_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return lstm_cell_kernel(input, h, c, w_ih, w_hh, b_ih, b_hh,
                            layer=_layer_op(input, h, c, w_ih, w_hh, b_ih, b_hh))


@_routed("gru_cell")
def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """One GRU step on batched input [B, I] and hx [B, H]. Returns h'."""
    if _route(input, fits_kernels=_kernel_cell(w_hh, b_ih, b_hh)) == "torch":
        return _VF.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return gru_cell_kernel(input, hx, w_ih, w_hh, b_ih, b_hh,
                           layer=_layer_op(input, hx, w_ih, w_hh, b_ih, b_hh))


@_routed("rnn_cell")
def rnn_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step on batched input [B, I] and hx [B, H]. Returns h'."""
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
    if _route(input, fits_kernels=_kernel_cell(w_hh, b_ih, b_hh)) == "torch":
        return _torch_rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    return rnn_cell_kernel(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity,
                           layer=_layer_op(input, hx, w_ih, w_hh, b_ih, b_hh))
