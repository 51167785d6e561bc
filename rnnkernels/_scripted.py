"""What torch.jit.script compiles for our LSTM, GRU and RNN (their __prepare_scriptable__).

Note [scripting]
torch.jit.script cannot compile our modules' forward (engine choice, autocast, options in
Python), so each layer hands TorchScript a scriptable form of itself: a shallow copy whose
class is one of the two below, holding the same parameters, whose forward runs every layer
through the registered op (torch.ops.rnnkernels.rnn_layer; its autograd is registered in
C++, so a scripted model trains too). The forward is torch.nn's contract, written for
TorchScript: Tensor or PackedSequence input, batched or unbatched, an optional initial
state, dropout between layers in training, torch.nn's argument checks (check_forward_args).
A saved scripted model so calls our ops: it loads in Python after `import rnnkernels`, and
in a C++ program that loaded our op library (rnnkernels.op_library_path()). TorchScript
puts the copy into the scripted model's parent too (its protocol), where it runs our
kernels through the op as well. Not scriptable (RuntimeError): zoneout, DropConnect and the
layer-normalised LSTM. The cells hand over torch.nn's cell (nn.py): one step is torch's
cell op, portable to LibTorch without our library.
"""


from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence


def _run_layers(mode: str, rows: Tensor, h0: Tensor, c0: Optional[Tensor],
                weights: List[Tensor], has_biases: bool, has_projection: bool, num_layers: int,
                directions: int, dropout: float, training: bool,
                batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """rows [N, I] (time-major, or a PackedSequence's data), h0 [L*D, B, P], c0 [L*D, B, H]
    -> (output rows [N, D*P], h_n, c_n; c_n is h_n for the GRU and RNN)."""
    per = len(weights) // (num_layers * directions)
    need_workspace = False
    if torch.is_grad_enabled():
        need_workspace = rows.requires_grad or h0.requires_grad
        if c0 is not None and c0.requires_grad:
            need_workspace = True
        for w in weights:
            if w.requires_grad:
                need_workspace = True
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    x = rows
    for layer in range(num_layers):
        first = layer * directions
        layer_c0: Optional[Tensor] = None
        if c0 is not None:
            layer_c0 = c0[first:first + directions]
        out, h, c, _ = torch.ops.rnnkernels.rnn_layer(
            mode, x, weights[first * per:(first + directions) * per], has_biases,
            has_projection, h0[first:first + directions], layer_c0, batch_sizes, None,
            need_workspace)
        h_n.append(h)
        c_n.append(c)
        x = out
        if dropout > 0.0 and training and layer < num_layers - 1:
            x = torch.nn.functional.dropout(x, dropout, True)
    h_last = torch.cat(h_n, 0)
    return x, h_last, (torch.cat(c_n, 0) if c0 is not None else h_last)


def _dense_rows(input: Tensor, batch_first: bool,
                name: str) -> Tuple[Tensor, Tensor, int, int, bool]:
    """A dense input, batched [T, B, I] ([B, T, I]) or unbatched [T, I], as (the batched
    input, its time-major rows [T*B, I], T, B, whether it was batched)."""
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor "
                         f"instead")
    batched = input.dim() == 3
    if not batched:
        input = input.unsqueeze(0 if batch_first else 1)
    seq = input.transpose(0, 1) if batch_first else input
    rows = seq.reshape(seq.size(0) * seq.size(1), seq.size(2))
    return input, rows, seq.size(0), seq.size(1), batched


def _sequence(output: Tensor, steps: int, batch: int, batch_first: bool) -> Tensor:
    seq = output.view(steps, batch, output.size(1))
    return seq.transpose(0, 1) if batch_first else seq


class ScriptableLSTM(nn.LSTM):
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        orig_input = input
        batch_sizes: Optional[Tensor] = None
        sorted_indices: Optional[Tensor] = None
        unsorted_indices: Optional[Tensor] = None
        steps, batch, batched = 0, 0, True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            rows, batch = input, int(batch_sizes[0])
        else:
            input, rows, steps, batch, batched = _dense_rows(input, self.batch_first, "LSTM")
        directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = torch.zeros(self.num_layers * directions, batch, real_hidden,
                             dtype=input.dtype, device=input.device)
            c0 = torch.zeros(self.num_layers * directions, batch, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        else:
            h0, c0 = hx
            if batched:
                if h0.dim() != 3 or c0.dim() != 3:
                    raise RuntimeError(f"For batched 3-D input, hx and cx should also be 3-D "
                                       f"but got ({h0.dim()}-D, {c0.dim()}-D) tensors")
            else:
                if h0.dim() != 2 or c0.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx and cx should also be "
                                       f"2-D but got ({h0.dim()}-D, {c0.dim()}-D) tensors")
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            if sorted_indices is not None:
                h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        self.check_forward_args(input, (h0, c0), batch_sizes)
        output, h_n, c_n = _run_layers(
            "lstm", rows, h0, c0, self._flat_weights, self.bias, self.proj_size > 0,
            self.num_layers, directions, float(self.dropout), self.training, batch_sizes)
        if isinstance(orig_input, PackedSequence):
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        output = _sequence(output, steps, batch, self.batch_first)
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)


class ScriptableRNN(nn.RNNBase):
    """GRU and RNN (tanh, relu): one hidden state."""

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None
                ) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        orig_input = input
        batch_sizes: Optional[Tensor] = None
        sorted_indices: Optional[Tensor] = None
        unsorted_indices: Optional[Tensor] = None
        steps, batch, batched = 0, 0, True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            rows, batch = input, int(batch_sizes[0])
        else:
            input, rows, steps, batch, batched = _dense_rows(input, self.batch_first, self.mode)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            h0 = torch.zeros(self.num_layers * directions, batch, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        else:
            h0 = hx
            if batched and h0.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got "
                                   f"{h0.dim()}-D tensor")
            if not batched:
                if h0.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but "
                                       f"got {h0.dim()}-D tensor")
                h0 = h0.unsqueeze(1)
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
        self.check_forward_args(input, h0, batch_sizes)
        mode = "gru" if self.mode == "GRU" else ("rnn_relu" if self.mode == "RNN_RELU" else "rnn_tanh")
        output, h_n, _ = _run_layers(
            mode, rows, h0, None, self._flat_weights, self.bias, False, self.num_layers,
            directions, float(self.dropout), self.training, batch_sizes)
        if isinstance(orig_input, PackedSequence):
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), h_n
        output = _sequence(output, steps, batch, self.batch_first)
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n
