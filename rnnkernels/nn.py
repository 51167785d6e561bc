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

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional as RF

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"Tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _check_state_tensor(name: str, value, input: Tensor) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {_describe(value)}")
    if value.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
        raise RuntimeError(
            f"{name} must have the same dtype as the input: expected {input.dtype}, got {value.dtype}")
    if value.device != input.device:
        raise RuntimeError(
            f"{name} must be on the same device as the input: expected {input.device}, got {value.device}")


def _check_batch_sizes(data: Tensor, batch_sizes: Tensor) -> None:
    """The checks torch's C++ RNN code makes on a PackedSequence, made before any work."""
    if not isinstance(batch_sizes, Tensor) or batch_sizes.dim() != 1:
        raise RuntimeError(f"PackedSequence.batch_sizes must be a 1-D tensor, got {_describe(batch_sizes)}")
    if batch_sizes.device.type != "cpu" or batch_sizes.dtype != torch.int64:
        raise RuntimeError(
            "PackedSequence.batch_sizes must be a CPU int64 tensor, got "
            f"{batch_sizes.dtype} on {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if bool((batch_sizes <= 0).any()):
        raise RuntimeError(f"PackedSequence.batch_sizes must be positive, got {batch_sizes.tolist()}")
    if batch_sizes.numel() > 1 and bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError(
            f"PackedSequence.batch_sizes must be non-increasing, got {batch_sizes.tolist()}")
    total = int(batch_sizes.sum())
    if total != data.size(0):
        raise RuntimeError(
            f"PackedSequence.batch_sizes sum to {total} but its data has {data.size(0)} rows")


class _RecurrentForward:
    """forward() shared by RNN, LSTM and GRU (mixed in before the torch.nn class)."""

    def _kernel_forward(self, input, hx):
        raise NotImplementedError

    def _run(self, input, hx, is_lstm: bool):
        self._update_flat_weights()
        directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size
        name = type(self).__name__
        orig_input = input
        is_batched, batch_dim = True, 0 if self.batch_first else 1
        sorted_indices = unsorted_indices = None

        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            self.check_input(input, batch_sizes)
            _check_batch_sizes(input, batch_sizes)
            max_batch = int(batch_sizes[0])
            if hx is not None:
                hx = self._check_hx_structure(hx, is_lstm, input, expected_dim=3)
                if sorted_indices is not None:
                    if sorted_indices.numel() != max_batch:
                        raise RuntimeError(
                            f"PackedSequence.sorted_indices has {sorted_indices.numel()} entries "
                            f"but the batch has {max_batch} sequences")
                    hx = self._check_and_permute(hx, input, batch_sizes, sorted_indices, is_lstm)
                else:
                    self.check_forward_args(input, hx, batch_sizes)
        else:
            batch_sizes = None
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: expected input to be a Tensor or PackedSequence, got "
                                f"{_describe(input)}")
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = self._check_hx_structure(hx, is_lstm, input,
                                              expected_dim=3 if is_batched else 2)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
            self.check_input(input, batch_sizes)
            if input.size(1 - batch_dim) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            max_batch = input.size(batch_dim)
            if hx is not None:
                self.check_forward_args(input, hx, batch_sizes)

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

    def _check_hx_structure(self, hx, is_lstm: bool, input: Tensor, expected_dim: int):
        name = type(self).__name__
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise RuntimeError(
                    f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}"
                    + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
            _check_state_tensor("hx[0] (h_0)", hx[0], input)
            _check_state_tensor("hx[1] (c_0)", hx[1], input)
            if hx[0].dim() != expected_dim or hx[1].dim() != expected_dim:
                kind = "batched 3-D" if expected_dim == 3 else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {expected_dim}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return tuple(hx)
        _check_state_tensor("hx", hx, input)
        if hx.dim() != expected_dim:
            kind = "batched 3-D" if expected_dim == 3 else "unbatched 2-D"
            raise RuntimeError(
                f"For {kind} input, hx should also be {expected_dim}-D but got {hx.dim()}-D tensor")
        return hx

    def _check_and_permute(self, hx, input, batch_sizes, sorted_indices, is_lstm):
        # torch.nn permutes first and lets C++ check sizes; checking the user's shapes first
        # gives the same errors without index_select failing on them.
        self.check_forward_args(input, hx, batch_sizes)
        return self.permute_hidden(hx, sorted_indices)


class RNN(_RecurrentForward, nn.RNN):
    __doc__ = "rnnkernels drop-in for torch.nn.RNN.\n\n" + (nn.RNN.__doc__ or "")

    def _kernel_forward(self, input, hx, batch_sizes):
        return RF.rnn(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                      self.training, self.bidirectional, self.batch_first, batch_sizes,
                      "relu" if self.mode == "RNN_RELU" else "tanh")

    def forward(self, input, hx=None):  # noqa: D102
        return self._run(input, hx, is_lstm=False)


class GRU(_RecurrentForward, nn.GRU):
    __doc__ = "rnnkernels drop-in for torch.nn.GRU.\n\n" + (nn.GRU.__doc__ or "")

    def _kernel_forward(self, input, hx, batch_sizes):
        return RF.gru(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                      self.training, self.bidirectional, self.batch_first, batch_sizes)

    def forward(self, input, hx=None):  # noqa: D102
        return self._run(input, hx, is_lstm=False)


class LSTM(_RecurrentForward, nn.LSTM):
    __doc__ = "rnnkernels drop-in for torch.nn.LSTM.\n\n" + (nn.LSTM.__doc__ or "")

    def _kernel_forward(self, input, hx, batch_sizes):
        output, h_n, c_n = RF.lstm(input, hx, self._flat_weights, self.bias, self.num_layers,
                                   self.dropout, self.training, self.bidirectional,
                                   self.batch_first, batch_sizes)
        return output, (h_n, c_n)

    def forward(self, input, hx=None):  # noqa: D102
        return self._run(input, hx, is_lstm=True)


# ---------------------------------------------------------------- cells


class _CellForward:
    """Argument handling shared by the cells: torch.nn's checks, plus the ones its C++
    makes (input_size, batch and hidden sizes, dtype, device)."""

    def _cell_inputs(self, input, hx, is_lstm: bool):
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor, got {_describe(input)}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None
        if hx is not None:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise RuntimeError(
                        f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}")
                states = list(hx)
                for idx, value in enumerate(states):
                    if not isinstance(value, Tensor):
                        raise TypeError(f"{name}: hx[{idx}] must be a Tensor, got {_describe(value)}")
                    if value.dim() not in (1, 2):
                        raise ValueError(
                            f"{name}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
            else:
                if not isinstance(hx, Tensor):
                    raise TypeError(f"{name}: hx must be a Tensor, got {_describe(hx)}")
                if hx.dim() not in (1, 2):
                    raise ValueError(
                        f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
                states = [hx]
        is_batched = input.dim() == 2
        if states is not None:
            for idx, value in enumerate(states):
                if value.dim() != input.dim():
                    label = f"hx[{idx}]" if is_lstm else "hx"
                    raise RuntimeError(
                        f"{name}: {label} must be {input.dim()}-D like the input "
                        f"({'batched' if is_batched else 'unbatched'}), got {value.dim()}-D "
                        f"shape {tuple(value.shape)}")
        if not is_batched:
            input = input.unsqueeze(0)
            if states is not None:
                states = [s.unsqueeze(0) for s in states]
        if input.dtype != self.weight_ih.dtype and not torch._C._is_any_autocast_enabled():
            raise RuntimeError(
                f"{name}: expected input of dtype {self.weight_ih.dtype} (the weights' dtype), "
                f"got {input.dtype}")
        if input.device != self.weight_ih.device:
            raise RuntimeError(
                f"{name}: expected input on {self.weight_ih.device} (the weights' device), got "
                f"{input.device}")
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        if states is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            states = [zeros, zeros] if is_lstm else [zeros]
        for idx, value in enumerate(states):
            label = f"hidden{idx}"
            _check_state_tensor(f"{name} {label}", value, input)
            if value.size(0) != input.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match {label} batch size "
                    f"{value.size(0)}")
            if value.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"{label} has inconsistent hidden_size: got {value.size(1)}, expected "
                    f"{self.hidden_size}")
        return input, states, is_batched


class RNNCell(_CellForward, nn.RNNCell):
    __doc__ = "rnnkernels drop-in for torch.nn.RNNCell.\n\n" + (nn.RNNCell.__doc__ or "")

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: D102
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        input, (h,), is_batched = self._cell_inputs(input, hx, is_lstm=False)
        out = RF.rnn_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                          self.nonlinearity)
        return out if is_batched else out.squeeze(0)


class GRUCell(_CellForward, nn.GRUCell):
    __doc__ = "rnnkernels drop-in for torch.nn.GRUCell.\n\n" + (nn.GRUCell.__doc__ or "")

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: D102
        input, (h,), is_batched = self._cell_inputs(input, hx, is_lstm=False)
        out = RF.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return out if is_batched else out.squeeze(0)


class LSTMCell(_CellForward, nn.LSTMCell):
    __doc__ = "rnnkernels drop-in for torch.nn.LSTMCell.\n\n" + (nn.LSTMCell.__doc__ or "")

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None  # noqa: D102
                ) -> tuple[Tensor, Tensor]:
        input, (h, c), is_batched = self._cell_inputs(input, hx, is_lstm=True)
        h, c = RF.lstm_cell(input, (h, c), self.weight_ih, self.weight_hh, self.bias_ih,
                            self.bias_hh)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
