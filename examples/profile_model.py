"""Profile a model that uses rnnkernels with torch.profiler.

    python examples/profile_model.py          # prints the top ops, writes trace.json

rnnkernels ops appear as rnnkernels.<cell>.layer<k> (one range per layer),
rnnkernels::<cell>_forward / rnnkernels::<cell>_backward (the ops), and
"rnnkernels::<cell>_forward (forward direction)" / "(reverse direction)" inside them.
On CUDA, wrap the run in torch.autograd.profiler.emit_nvtx() to get the same names as
NVTX ranges in Nsight Systems.
"""

import torch
from torch.profiler import ProfilerActivity, profile

import rnnkernels

model = rnnkernels.GRU(128, 256, num_layers=2, bidirectional=True)
x = torch.randn(100, 16, 128)

with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    out, h_n = model(x)
    out.sum().backward()

print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
prof.export_chrome_trace("trace.json")
print("wrote trace.json (open in chrome://tracing or https://ui.perfetto.dev)")
