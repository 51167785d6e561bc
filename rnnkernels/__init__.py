"""rnnkernels: fused RNN, LSTM and GRU kernels for PyTorch.

Drop-in replacements for torch.nn's recurrent modules that run fused CPU (AVX-512,
AVX2, portable) and CUDA kernels:

    import rnnkernels
    lstm = rnnkernels.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
"""

from ._ext import _C

__version__ = "0.1.0"


def build_info():
    """Which backends, CPU ISAs and dtypes this build contains."""
    return _C.build_info()
