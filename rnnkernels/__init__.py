"""rnnkernels: fused RNN, LSTM and GRU kernels for PyTorch.

Drop-in replacements for torch.nn's recurrent modules that run fused CPU (AVX-512,
AVX2, portable) and CUDA kernels:

    import rnnkernels
    lstm = rnnkernels.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)

Swapping torch.nn.LSTM for rnnkernels.LSTM changes nothing but speed: same constructor,
parameters, state_dict, forward signature, outputs and exceptions.
"""

from ._ext import _C
from . import ops  # noqa: F401  (fake kernels and autograd for torch.ops.rnnkernels)
from . import functional  # noqa: F401
from . import reference  # noqa: F401  (pure-PyTorch reference of the functional API)
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .convert import convert, revert

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "functional", "ops",
           "reference", "build_info", "convert", "revert"]


def build_info():
    """Which backends, CPU ISAs and dtypes this build contains, and the active CPU kernels."""
    return _C.build_info()
