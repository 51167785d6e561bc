"""Variable-length batches with PackedSequence, exactly as with torch.nn.

    python examples/packed_sequences.py
"""

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels

lstm = rnnkernels.LSTM(16, 32, bidirectional=True, batch_first=True)
reference = torch.nn.LSTM(16, 32, bidirectional=True, batch_first=True)
reference.load_state_dict(lstm.state_dict())

lengths = torch.tensor([7, 3, 5, 2])
padded = torch.randn(4, 7, 16)
packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)

out, (h_n, c_n) = lstm(packed)
ref_out, (ref_h, ref_c) = reference(packed)
unpacked, out_lengths = pad_packed_sequence(out, batch_first=True)
print("output", tuple(unpacked.shape), "lengths", out_lengths.tolist())
print("max |difference| to torch.nn:", (out.data - ref_out.data).abs().max().item(),
      (h_n - ref_h).abs().max().item(), (c_n - ref_c).abs().max().item())
