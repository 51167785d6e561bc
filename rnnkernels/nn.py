"""Drop-in replacements for torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell and GRUCell.

Each class subclasses its torch.nn counterpart, so construction, parameters, their
names and initialisation, state_dict, repr, `_flat_weights`, `all_weights`,
`flatten_parameters()`, `.to()`, deepcopy and pickling are torch.nn's own, and
`isinstance(m, torch.nn.LSTM)` holds. Only `forward` differs: it checks its arguments
as torch.nn does (same exception types; clearer messages where torch's come from deep
inside its kernels, and checks where torch 2.13 crashes), then runs rnnkernels'
kernels through rnnkernels.functional.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, _VF, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional as RF
from . import _layers

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "NotATensorError",
           "DtypeMismatchError", "StateRankError", "LSTMStateError", "InvalidPackedSequenceError"]


# Note [exception types]
# torch.nn raises different exception types for one mistake depending on where its check
# happens to sit: its Python code (ValueError, RuntimeError), Python itself (AttributeError
# from `hx.dim()` on a list, IndexError from `hx[1]` on a 1-tuple), ATen's argument parser
# (TypeError) or a kernel (RuntimeError, IndexError). We check every argument up front, with
# one message that names the expected and the actual value, and raise a class that derives
# from every type torch.nn raises for that mistake on any path, so that an `except` clause
# written against torch.nn still catches ours (numpy's AxisError(ValueError, IndexError) is
# the same idea). tests/test_bad_input.py compares against torch.nn live.


class NotATensorError(TypeError, AttributeError):
    """An argument that must be a Tensor is not one (torch.nn: AttributeError or TypeError)."""


class DtypeMismatchError(ValueError, RuntimeError):
    """Input, state and weights disagree in dtype (torch.nn: ValueError from check_input on
    most paths, RuntimeError from the kernels for packed LSTM input, the cells and states)."""


class StateRankError(RuntimeError, IndexError):
    """A state's rank does not go with the input's (torch.nn: RuntimeError, or IndexError
    where its kernel indexes a dimension the state does not have)."""


class LSTMStateError(RuntimeError, TypeError, IndexError, ValueError):
    """LSTM state is not a pair (h_0, c_0) (torch.nn: RuntimeError for a 3-tuple, IndexError
    for a 1-tuple, TypeError for a single tensor it cannot unpack, ValueError where it first
    rejects the input's dtype or, in LSTMCell, a state's rank)."""


class InvalidPackedSequenceError(RuntimeError, ValueError, TypeError, IndexError):
    """A PackedSequence breaks its invariants (torch.nn: RuntimeError from its kernels, TypeError,
    ValueError or IndexError from reading batch_sizes, or no error and a wrong answer)."""


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"Tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _lstm_state_pair(hx, any_indexable: bool):
    """(hx[0], hx[1]) when hx is a pair, or with any_indexable anything torch.nn indexes
    twice without error (a tuple or list of two or more, a tensor of two or more rows);
    else None."""
    if isinstance(hx, (tuple, list)):
        if len(hx) == 2 or (any_indexable and len(hx) > 2):
            return hx[0], hx[1]
    elif any_indexable and isinstance(hx, Tensor) and hx.dim() >= 1 and hx.size(0) >= 2:
        return hx[0], hx[1]
    return None


def _require_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise NotATensorError(f"{name} must be a Tensor, got {_describe(value)}")
    return value


def _check_state_tensor(name: str, value, input: Tensor, promote: bool = False,
                        widen: bool = False) -> Tensor:
    """Returns value, cast to input's dtype when promote and torch.nn would promote it.

    torch.nn's LSTM and LSTMCell accept a cell state c_0 of any dtype that type promotion
    with the input's dtype turns into the input's dtype (bool, integers, lower-precision
    floats): c_0 only enters `f * c_0`, so the result equals running on c_0.to(input.dtype).
    """
    _require_tensor(name, value)
    if value.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
        promoted = torch.promote_types(value.dtype, input.dtype)
        if promote and promoted == input.dtype:
            value = value.to(input.dtype)
        elif not (widen and promoted == value.dtype and value.dtype.is_floating_point):
            # widen: torch.nn's LSTMCell also takes a c_0 of a wider floating dtype (float64
            # for float32 input) and returns h' and c' in it, exactly; the caller runs
            # torch's cell then. A complex c_0 stays refused: torch.nn returns complex
            # states from real weights.
            raise DtypeMismatchError(
                f"{name} must have the same dtype as the input: expected {input.dtype}, "
                f"got {value.dtype}")
    if value.device != input.device:
        raise RuntimeError(
            f"{name} must be on the same device as the input: expected {input.device}, got "
            f"{value.device}")
    return value


# A private torch API (torch 2.x); without it, .tolist() below fails on a vmapped tensor.
_is_vmapped = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", lambda t: False)


def _check_packed_sequence(data, batch_sizes, sorted_indices, unsorted_indices) -> None:
    """Checks the invariants of a PackedSequence before any work: torch.nn checks some of them
    deep in its kernels, and silently computes wrong results (or crashes) on the others."""
    if not isinstance(data, Tensor):
        raise NotATensorError(f"PackedSequence.data must be a Tensor, got {_describe(data)}")
    if not isinstance(batch_sizes, Tensor) or batch_sizes.dim() != 1:
        raise InvalidPackedSequenceError(
            f"PackedSequence.batch_sizes must be a 1-D tensor, got {_describe(batch_sizes)}")
    if batch_sizes.device.type != "cpu" or batch_sizes.dtype != torch.int64:
        raise InvalidPackedSequenceError(
            "PackedSequence.batch_sizes must be a CPU int64 tensor, got "
            f"{batch_sizes.dtype} on {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        raise InvalidPackedSequenceError(
            "Expected sequence length to be larger than 0 in RNN: PackedSequence.batch_sizes "
            "is empty")
    if _is_vmapped(batch_sizes):
        # Note [vmap rules]: the samples of a vmap share one step structure.
        raise InvalidPackedSequenceError(
            "PackedSequence.batch_sizes cannot be vmapped: the samples under torch.func.vmap "
            "must share one PackedSequence step structure (pack each sample with the same "
            "lengths and vmap over .data only)")
    sizes = batch_sizes.tolist()
    if min(sizes) <= 0:
        raise InvalidPackedSequenceError(
            f"PackedSequence.batch_sizes must be positive, got {sizes}")
    if any(later > earlier for earlier, later in zip(sizes, sizes[1:])):
        raise InvalidPackedSequenceError(
            f"PackedSequence.batch_sizes must be non-increasing, got {sizes}")
    if data.dim() >= 1 and sum(sizes) != data.size(0):
        raise InvalidPackedSequenceError(
            f"PackedSequence.batch_sizes sum to {sum(sizes)} but its data has {data.size(0)} "
            "rows")
    batch = sizes[0]
    for name, indices in (("sorted_indices", sorted_indices),
                          ("unsorted_indices", unsorted_indices)):
        if indices is None:
            continue
        if (not isinstance(indices, Tensor) or indices.dim() != 1 or indices.numel() != batch
                or indices.dtype not in (torch.int64, torch.int32)):
            raise InvalidPackedSequenceError(
                f"PackedSequence.{name} must be a 1-D integer tensor of {batch} indices "
                f"(batch_sizes[0]), got {_describe(indices)}")
    if (sorted_indices is not None and unsorted_indices is not None
            and sorted_indices.device.type == "cpu" and unsorted_indices.device.type == "cpu"):
        # On a GPU this check would cost a host sync per call; there only lengths are checked.
        unsorted = unsorted_indices.long()
        in_range = bool(((unsorted >= 0) & (unsorted < batch)).all())
        if not in_range or not torch.equal(sorted_indices.long()[unsorted],
                                           torch.arange(batch)):
            raise InvalidPackedSequenceError(
                "PackedSequence.sorted_indices and unsorted_indices must be inverse "
                f"permutations of range({batch}), got {sorted_indices.tolist()} and "
                f"{unsorted_indices.tolist()}")


def _check_probability(name: str, value, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} should be a number in range [0, 1) representing the "
                         f"probability of {meaning}, got {value!r}")


class _ConstructorMessages:
    """Construction is torch.nn's own; only its error messages gain the arguments given.

    torch.nn's constructor messages name the rule but not always the value that broke it
    ("input_size must be greater than zero", a negative-dimension error from torch.empty
    for the cells). The same exception type is re-raised with the arguments appended, so
    what is accepted and what is rejected, and as what, stays exactly torch.nn's.
    """

    _positional_names: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except (TypeError, ValueError, RuntimeError) as error:
            if type(error) not in (TypeError, ValueError, RuntimeError):
                raise
            given = dict(zip(self._positional_names, args))
            given.update(kwargs)
            described = ", ".join(f"{name}={value!r}" for name, value in given.items())
            raise type(error)(f"{error} (got {described})") from error


_LAYER_ARGUMENTS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                    "bidirectional", "proj_size", "device", "dtype")


def _scriptable_twin(module, scriptable_class=None):
    """torch.jit.script compiles this instead of `module` (__prepare_scriptable__): a
    shallow copy sharing `module`'s parameters and state, of a class whose forward
    TorchScript compiles: for the layers, rnnkernels/_scripted.py's, which runs our ops
    (Note [scripting]); for the cells, torch.nn's cell, whose step is torch's cell op.
    Refused (RuntimeError) for options that forward lacks, which it would silently drop."""
    from .convert import _TO_TORCH, _TORCH_EQUIVALENT_OPTIONS

    used = {k: getattr(module, k) for k, off in _TORCH_EQUIVALENT_OPTIONS.items()
            if getattr(module, k, off) != off}
    if used:
        raise RuntimeError(
            f"torch.jit.script: {type(module).__name__} uses {used}, which the forward a "
            f"scripted rnnkernels module runs does not have; use torch.export (or "
            f"torch.jit.trace) for such a module")
    twin = copy.copy(module)
    twin.__class__ = scriptable_class or _TO_TORCH[type(module)]
    return twin


class _RecurrentForward(_ConstructorMessages):
    """forward() shared by RNN, LSTM and GRU (mixed in before the torch.nn class)."""

    _positional_names = _LAYER_ARGUMENTS
    # Class defaults: modules converted from torch.nn or unpickled from older versions have them.
    recurrent_dropconnect = 0.0
    zoneout_h = 0.0

    def __init__(self, *args, recurrent_dropconnect: float = 0.0, zoneout_h: float = 0.0,
                 **kwargs):
        """torch.nn's arguments, plus (keyword only, beyond torch.nn, off by default):

        recurrent_dropconnect: DropConnect on the hidden-to-hidden weights (Wan et al.,
            2013; the weight drop of AWD-LSTM): in training mode each forward multiplies
            every weight_hh_l* by its own Bernoulli(1 - p) mask scaled by 1/(1 - p), drawn
            from torch's default generator in parameter order, and uses it for all time
            steps of that forward. Gradients flow to the unmasked weights. Eval: no mask.
        zoneout_h: zoneout on the hidden state (Krueger et al., 2016), fused in the kernels:
            after every step each unit of h keeps its previous value with probability p
            (training: Bernoulli draws per row, unit and step, from torch's default
            generator, per layer before it runs; eval: h = p h_prev + (1 - p) h_new, the
            expectation). The output is the state after zoneout. See
            rnnkernels._layers.zoneout_weights.
        """
        _check_probability("recurrent_dropconnect", recurrent_dropconnect,
                           "dropping a recurrent weight")
        _check_probability("zoneout_h", zoneout_h, "keeping a unit's previous hidden state")
        super().__init__(*args, **kwargs)
        self.recurrent_dropconnect = float(recurrent_dropconnect)
        self.zoneout_h = float(zoneout_h)

    def __prepare_scriptable__(self):
        from . import _scripted

        return _scriptable_twin(self, _scripted.ScriptableLSTM if isinstance(self, nn.LSTM)
                                else _scripted.ScriptableRNN)

    def _forward_weights(self) -> list[Tensor]:
        """_flat_weights, with this forward's DropConnect masks applied to W_hh in training."""
        p = self.recurrent_dropconnect
        if not self.training or p == 0:
            return self._flat_weights
        keep = 1.0 - p
        return [w * torch.empty_like(w, requires_grad=False).bernoulli_(keep).div_(keep)
                if name.startswith("weight_hh") else w
                for name, w in zip(self._flat_weights_names, self._flat_weights)]

    def extra_repr(self) -> str:
        text = super().extra_repr()
        for name in ("recurrent_dropconnect", "zoneout_h", "zoneout_c", "layer_norm"):
            if getattr(self, name, 0.0):
                text += f", {name}={getattr(self, name)}"
        return text

    def _kernel_forward(self, input, hx, batch_sizes):
        raise NotImplementedError

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        weight_dtype = self._flat_weights[0].dtype
        if input.dtype != weight_dtype and not torch._C._is_any_autocast_enabled():
            raise DtypeMismatchError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: "
                f"model.to({input.dtype})")
        super().check_input(input, batch_sizes)

    def _run(self, input, hx, is_lstm: bool):
        self._update_flat_weights()
        name = type(self).__name__
        # torch.nn's constructor lets these through and its forward rejects them (TypeError
        # from _VF's argument parser).
        if not isinstance(self.bidirectional, bool):
            raise TypeError(f"{name}: bidirectional must be a bool, got {self.bidirectional!r}")
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int):
            raise TypeError(f"{name}: num_layers must be an int, got {self.num_layers!r}")
        directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size
        orig_input = input
        is_batched, batch_dim = True, 0 if self.batch_first else 1
        sorted_indices = unsorted_indices = None

        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            _check_packed_sequence(input, batch_sizes, sorted_indices, unsorted_indices)
            # torch.nn reads the state (permute_hidden: hx[0], hx[1] of anything that has
            # them when the sequence is unsorted) before its kernel checks the input.
            if hx is not None:
                hx = self._check_hx_structure(hx, is_lstm, input, expected_dim=3,
                                              any_indexable=sorted_indices is not None)
            self.check_input(input, batch_sizes)
            max_batch = int(batch_sizes[0])
            if hx is not None:
                # torch.nn permutes first and never checks a packed LSTM's state: a larger
                # batch is silently cut by index_select, fewer c_0 layers crash torch 2.13.
                self.check_forward_args(input, hx, batch_sizes)
                hx = self._check_state_dtypes(hx, is_lstm, input)
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if not isinstance(input, Tensor):
                raise NotATensorError(
                    f"{name}: expected input to be a Tensor or PackedSequence, got "
                    f"{_describe(input)}")
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = self._check_hx_structure(hx, is_lstm, input,
                                              expected_dim=3 if is_batched else 2,
                                              any_indexable=not is_batched)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
            self.check_input(input, batch_sizes)
            if input.size(1 - batch_dim) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            max_batch = input.size(batch_dim)
            if hx is not None:
                self.check_forward_args(input, hx, batch_sizes)
                hx = self._check_state_dtypes(hx, is_lstm, input)

        if hx is None:
            zeros = dict(dtype=input.dtype, device=input.device)
            h0 = torch.zeros(self.num_layers * directions, max_batch, real_hidden, **zeros)
            if is_lstm:
                hx = (h0, torch.zeros(self.num_layers * directions, max_batch, self.hidden_size,
                                      **zeros))
            else:
                hx = h0

        output, hidden = self._kernel_forward(input, hx, batch_sizes)

        if isinstance(orig_input, PackedSequence):
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
        return output, hidden

    @staticmethod
    def _check_state_dtypes(hx, is_lstm: bool, input: Tensor):
        """The states' dtype and device against the input's, checked where torch.nn's kernel
        meets them: after every shape check (check_forward_args)."""
        if is_lstm:
            return (_check_state_tensor("hx[0] (h_0)", hx[0], input),
                    _check_state_tensor("hx[1] (c_0)", hx[1], input, promote=True))
        return _check_state_tensor("hx", hx, input)

    def _check_hx_structure(self, hx, is_lstm: bool, input: Tensor, expected_dim: int,
                            any_indexable: bool):
        name = type(self).__name__
        kind = "batched 3-D" if expected_dim == 3 else "unbatched 2-D"
        if is_lstm:
            # torch.nn's unbatched and unsorted packed paths read hx[0] and hx[1] of
            # anything that has them (a longer tuple, a stacked [2, L, ...] tensor); its
            # other paths need a pair.
            pair = _lstm_state_pair(hx, any_indexable)
            if pair is None:
                raise LSTMStateError(
                    f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}"
                    + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
            h0 = _require_tensor("hx[0] (h_0)", pair[0])
            c0 = _require_tensor("hx[1] (c_0)", pair[1])
            if h0.dim() != expected_dim or c0.dim() != expected_dim:
                read_as = (f": hx is one tensor of shape {tuple(hx.shape)}, read as (h_0, c_0) = "
                           f"(hx[0], hx[1])" if isinstance(hx, Tensor) else "")
                raise StateRankError(
                    f"For {kind} input, hx and cx should also be {expected_dim}-D but got "
                    f"({h0.dim()}-D, {c0.dim()}-D) tensors{read_as}")
            return (h0, c0)
        hx = _require_tensor("hx", hx)
        if hx.dim() != expected_dim:
            raise StateRankError(
                f"For {kind} input, hx should also be {expected_dim}-D but got {hx.dim()}-D tensor")
        return hx


class RNN(_RecurrentForward, nn.RNN):
    __doc__ = "rnnkernels drop-in for torch.nn.RNN.\n\n" + (nn.RNN.__doc__ or "")
    # torch.nn.RNN reads its 4th positional argument as nonlinearity.
    _positional_names = _LAYER_ARGUMENTS[:3] + ("nonlinearity",) + _LAYER_ARGUMENTS[3:]

    def _kernel_forward(self, input, hx, batch_sizes):
        return RF.rnn(input, hx, self._forward_weights(), self.bias, self.num_layers, self.dropout,
                      self.training, self.bidirectional, self.batch_first, batch_sizes,
                      "relu" if self.mode == "RNN_RELU" else "tanh", zoneout_h=self.zoneout_h)

    def forward(self, input, hx=None):  # noqa: D102
        return self._run(input, hx, is_lstm=False)


class GRU(_RecurrentForward, nn.GRU):
    __doc__ = "rnnkernels drop-in for torch.nn.GRU.\n\n" + (nn.GRU.__doc__ or "")

    def _kernel_forward(self, input, hx, batch_sizes):
        return RF.gru(input, hx, self._forward_weights(), self.bias, self.num_layers, self.dropout,
                      self.training, self.bidirectional, self.batch_first, batch_sizes,
                      zoneout_h=self.zoneout_h)

    def forward(self, input, hx=None):  # noqa: D102
        return self._run(input, hx, is_lstm=False)


class LSTM(_RecurrentForward, nn.LSTM):
    __doc__ = "rnnkernels drop-in for torch.nn.LSTM.\n\n" + (nn.LSTM.__doc__ or "")
    zoneout_c = 0.0
    layer_norm = False

    def __init__(self, *args, zoneout_c: float = 0.0, layer_norm: bool = False, **kwargs):
        """torch.nn's arguments, the options of _RecurrentForward, and (keyword only):

        zoneout_c: zoneout on the cell state, as zoneout_h on h (h and c both come from the
            cell state before zoneout, as in Krueger et al.); drawn after h's block of the
            same layer.
        layer_norm: the layer-normalised LSTM of Ba et al. (2016), fused in the kernels:
            gates = LN(W_ih x) + LN(W_hh h) + b_ih + b_hh, c as usual, h = o * tanh(LN(c)),
            each LayerNorm over the whole vector (4H or H, eps 1e-5). Adds, per layer and
            direction, layer_norm_ih_weight_l{k} [4H], layer_norm_hh_weight_l{k} [4H],
            layer_norm_c_weight_l{k} [H] (initialised to 1) and, with bias,
            layer_norm_c_bias_l{k} [H] (0); suffix _reverse for the reverse direction.
            Not with proj_size or zoneout (ValueError).
        """
        _check_probability("zoneout_c", zoneout_c, "keeping a unit's previous cell state")
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm must be a bool, got {layer_norm!r}")
        super().__init__(*args, **kwargs)
        self.zoneout_c = float(zoneout_c)
        if layer_norm:
            _layers.check_layer_norm_options(self.proj_size, self.zoneout_h, self.zoneout_c)
            factory = dict(device=self.weight_hh_l0.device, dtype=self.weight_hh_l0.dtype)
            for name, size in self._layer_norm_shapes():
                self.register_parameter(name, nn.Parameter(torch.empty(size, **factory)))
            self.layer_norm = True
            self._reset_layer_norm()

    def _layer_norm_shapes(self) -> list[tuple[str, int]]:
        """(name, size) of the layer-norm parameters, in the order the kernels take them."""
        H = self.hidden_size
        shapes = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[:2 if self.bidirectional else 1]:
                shapes += [(f"layer_norm_ih_weight_l{layer}{suffix}", 4 * H),
                           (f"layer_norm_hh_weight_l{layer}{suffix}", 4 * H),
                           (f"layer_norm_c_weight_l{layer}{suffix}", H)]
                if self.bias:
                    shapes.append((f"layer_norm_c_bias_l{layer}{suffix}", H))
        return shapes

    def _reset_layer_norm(self) -> None:
        with torch.no_grad():
            for name, _ in self._layer_norm_shapes():
                getattr(self, name).fill_(0.0 if "_bias_" in name else 1.0)

    def reset_parameters(self) -> None:  # noqa: D102
        super().reset_parameters()  # torch.nn's: every parameter uniform
        if self.layer_norm:
            self._reset_layer_norm()

    def _kernel_forward(self, input, hx, batch_sizes):
        layer_norm = ([getattr(self, name) for name, _ in self._layer_norm_shapes()]
                      if self.layer_norm else None)
        output, h_n, c_n = RF.lstm(input, hx, self._forward_weights(), self.bias, self.num_layers,
                                   self.dropout, self.training, self.bidirectional,
                                   self.batch_first, batch_sizes, zoneout_h=self.zoneout_h,
                                   zoneout_c=self.zoneout_c, layer_norm=layer_norm)
        return output, (h_n, c_n)

    def forward(self, input, hx=None):  # noqa: D102
        return self._run(input, hx, is_lstm=True)


# ---------------------------------------------------------------- cells


def _check_cell_state_rank(name: str, label: str, value) -> None:
    if not isinstance(value, Tensor):
        raise NotATensorError(f"{name}: {label} must be a Tensor, got {_describe(value)}")
    if value.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {value.dim()}D instead")


# The cells' fast path: every dtype the functional CPU path runs through the same op.
_FAST_DTYPES = frozenset(RF._CPU_DTYPES)


class _CellForward(_ConstructorMessages):
    """Argument handling shared by the cells: torch.nn's checks, plus the ones its C++
    makes (input_size, batch and hidden sizes, dtype, device)."""

    _positional_names = ("input_size", "hidden_size", "bias", "device", "dtype")

    def __prepare_scriptable__(self):
        return _scriptable_twin(self)

    def _cell_inputs(self, input, hx, is_lstm: bool):
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise NotATensorError(f"{name}: expected input to be a Tensor, got {_describe(input)}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None
        if hx is not None:
            if is_lstm:
                # torch.nn checks the rank of every element of hx first (a tensor's rows
                # too), then reads hx[0] and hx[1]; only the batched kernel needs a pair.
                if isinstance(hx, (tuple, list)) or (isinstance(hx, Tensor) and hx.dim() >= 1):
                    for index, value in enumerate(hx):
                        _check_cell_state_rank(name, f"hx[{index}]", value)
                pair = _lstm_state_pair(hx, any_indexable=input.dim() == 1)
                if pair is None:
                    raise LSTMStateError(
                        f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got "
                        f"{_describe(hx)}"
                        + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
                states, labels = list(pair), ["hx[0]", "hx[1]"]
            else:
                states, labels = [hx], ["hidden"]
                _check_cell_state_rank(name, "hidden", hx)
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        # torch.nn's kernel checks input_size, then each state's batch and hidden sizes, and
        # meets dtypes and devices only in its products: the same order here.
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        if states is None:
            zeros = self._zeros_state(input)
            states = [zeros, zeros] if is_lstm else [zeros]
        else:
            # torch.nn unsqueezes a state of the wrong rank and lets its kernel see a 3-D or
            # 1-D state: an error, a wrong answer (RNNCell) or, with hidden_size 1, a crash.
            # Raised where torch.nn's batch-size check stands.
            for label, value in zip(labels, states):
                if value.dim() != (2 if is_batched else 1):
                    kind = "batched 2-D" if is_batched else "unbatched 1-D"
                    raise StateRankError(
                        f"{name}: for {kind} input, {label} should also be "
                        f"{2 if is_batched else 1}-D but "
                        f"got {value.dim()}-D tensor of shape {tuple(value.shape)}")
            if not is_batched:
                states = [s.unsqueeze(0) for s in states]
        for idx, value in enumerate(states):
            label = f"hidden{idx}"
            if value.size(0) != input.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match {label} batch size "
                    f"{value.size(0)}")
            if value.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"{label} has inconsistent hidden_size: got {value.size(1)}, expected "
                    f"{self.hidden_size}")
        if input.dtype != self._input_dtype() and not torch._C._is_any_autocast_enabled():
            raise DtypeMismatchError(
                f"{name}: expected input of dtype {self._input_dtype()} (the weights' dtype), "
                f"got {input.dtype}")
        if input.device != self.weight_ih.device:
            raise RuntimeError(
                f"{name}: expected input on {self.weight_ih.device} (the weights' device), got "
                f"{input.device}")
        # c_0 (idx 1) may be promoted like torch.nn does: see _check_state_tensor.
        checked = [_check_state_tensor(f"{name} hidden{idx}", value, input, promote=idx == 1,
                                       widen=idx == 1)
                   for idx, value in enumerate(states)]
        return input, checked, is_batched

    def _fast_cell_weights(self, input, states):
        """(w_ih, w_hh, b_ih, b_hh) when this call may skip the full argument checks: CPU
        batched input of a kernel dtype and states (None or tensors) of exactly the shapes,
        dtype and device the weights expect, plain parameters (no parametrization), no
        autocast, torch.func transform or forward-mode AD. Else None: the full path then
        checks, raises as torch.nn does, or routes the call. This runs on every step of a
        cell loop: each attribute read is counted (is_cpu, not device.type)."""
        params = self._parameters
        w_ih, w_hh = params.get("weight_ih"), params.get("weight_hh")
        hidden_size = self.hidden_size
        if type(input) is not Tensor or w_ih is None or w_hh is None or not hidden_size:
            return None
        dtype = input.dtype
        if (dtype is not w_ih.dtype or dtype not in _FAST_DTYPES or not input.is_cpu
                or not w_ih.is_cpu):
            return None
        shape = input.shape
        if len(shape) != 2 or shape[1] != self.input_size:
            return None
        state_shape = (shape[0], hidden_size)
        for s in states:
            if s is not None and (type(s) is not Tensor or s.dtype is not dtype
                                  or s.shape != state_shape or not s.is_cpu):
                return None
        if not RF.plain_cpu_call():
            return None
        return w_ih, w_hh, params.get("bias_ih"), params.get("bias_hh")

    def _input_dtype(self) -> torch.dtype:
        """The dtype forward takes: the weights' (int8 modules: float32)."""
        return self.weight_ih.dtype

    def _zeros_state(self, input: Tensor) -> Tensor:
        """The default state for batched input [B, I]: zeros [B, hidden_size]."""
        return torch.zeros(input.shape[0], self.hidden_size, dtype=input.dtype,
                           device=input.device)


class RNNCell(_CellForward, nn.RNNCell):
    __doc__ = "rnnkernels drop-in for torch.nn.RNNCell.\n\n" + (nn.RNNCell.__doc__ or "")
    _positional_names = ("input_size", "hidden_size", "bias", "nonlinearity", "device", "dtype")

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: D102
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        weights = self._fast_cell_weights(input, (hx,))
        if weights is not None:
            h = hx if hx is not None else self._zeros_state(input)
            return RF.cell_step("rnn_cell", self.hidden_size,
                                (input, h, *weights, self.nonlinearity), 6)
        input, (h,), is_batched = self._cell_inputs(input, hx, is_lstm=False)
        out = RF.rnn_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                          self.nonlinearity)
        return out if is_batched else out.squeeze(0)


class GRUCell(_CellForward, nn.GRUCell):
    __doc__ = "rnnkernels drop-in for torch.nn.GRUCell.\n\n" + (nn.GRUCell.__doc__ or "")

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: D102
        weights = self._fast_cell_weights(input, (hx,))
        if weights is not None:
            h = hx if hx is not None else self._zeros_state(input)
            return RF.cell_step("gru_cell", self.hidden_size, (input, h, *weights), 6)
        input, (h,), is_batched = self._cell_inputs(input, hx, is_lstm=False)
        out = RF.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return out if is_batched else out.squeeze(0)


class LSTMCell(_CellForward, nn.LSTMCell):
    __doc__ = "rnnkernels drop-in for torch.nn.LSTMCell.\n\n" + (nn.LSTMCell.__doc__ or "")

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None  # noqa: D102
                ) -> tuple[Tensor, Tensor]:
        if hx is None or (type(hx) is tuple and len(hx) == 2):
            h, c = (None, None) if hx is None else hx
            weights = self._fast_cell_weights(input, (h, c))
            if weights is not None:
                zeros = self._zeros_state(input) if hx is None else None
                h = h if h is not None else zeros
                c = c if c is not None else zeros
                return RF.cell_step("lstm_cell", self.hidden_size, (input, h, c, *weights), 7)
        input, (h, c), is_batched = self._cell_inputs(input, hx, is_lstm=True)
        if c.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
            # A wider c_0 (see _check_state_tensor): torch's own cell, as torch.nn runs it.
            h, c = _VF.lstm_cell(input, (h, c), self.weight_ih, self.weight_hh, self.bias_ih,
                                 self.bias_hh)
        else:
            h, c = RF.lstm_cell(input, (h, c), self.weight_ih, self.weight_hh, self.bias_ih,
                                self.bias_hh)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
