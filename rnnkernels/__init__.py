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
from . import _double_backward  # noqa: F401  (create_graph=True: the backward op's derivative)
from . import backends  # noqa: F401  (rnnkernels.backends.cpu: the engine choice)
from . import functional  # noqa: F401
from . import reference  # noqa: F401  (pure-PyTorch reference of the functional API)
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .convert import convert, revert
from . import quantized  # noqa: F401  (int8 inference modules)
from .quantized import dequantize, quantize_dynamic
from . import _dynamo_support

_dynamo_support.install()  # torch.compile without allow_rnn (Note [compile without allow_rnn])

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "functional", "ops",
           "reference", "backends", "build_info", "convert", "revert", "quantized",
           "quantize_dynamic", "dequantize", "cpu_cache_stats", "empty_cpu_cache",
           "set_cpu_cache_limit", "op_library_path"]


def build_info():
    """Which backends, CPU ISAs and dtypes this build contains, the active CPU kernels, and
    cpu_engine: the engine setting and the engine of the last routed CPU call
    (rnnkernels.backends.cpu, Note [engine choice])."""
    info = _C.build_info()
    info["cpu_engine"] = backends.cpu.state()
    return info


def op_library_path() -> str:
    """The path of rnnkernels' op library: the ops, their kernels (CPU) and autograd without
    Python, for a C++ program linked against LibTorch that runs a saved model calling
    torch.ops.rnnkernels.* (dlopen it before torch::jit::load; examples/cpp_inference), or
    for a Python process without rnnkernels (torch.ops.load_library). rnnkernels._C links
    this library, so loading it where rnnkernels is imported changes nothing."""
    from pathlib import Path

    found = sorted(Path(__file__).resolve().parent.glob("_ops*.so"))
    if not found:
        raise FileNotFoundError("rnnkernels: the op library rnnkernels/_ops*.so is missing; "
                                "rebuild with `pip install --no-build-isolation -e .`")
    return str(found[0])


def cpu_cache_stats() -> dict:
    """The cache of large CPU buffers (outputs, workspaces, gradients of 4 MiB and more):
    cached_bytes (freed blocks kept for reuse), in_use_bytes (blocks behind live tensors),
    limit_bytes, hits and misses. Freed blocks are reused by the next request they fit,
    which spares a training loop the page faults of fresh memory every iteration."""
    return _C.cpu_cache_stats()


def empty_cpu_cache() -> None:
    """Returns every cached CPU buffer to the system (live tensors are not affected)."""
    _C.empty_cpu_cache()


def set_cpu_cache_limit(nbytes: int) -> None:
    """Keeps at most `nbytes` of freed CPU buffers for reuse (default 1 GiB, or the
    RNNKERNELS_CPU_CACHE_MB environment variable at import); 0 keeps none."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"set_cpu_cache_limit: expected an int number of bytes, got "
                        f"{type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"set_cpu_cache_limit: expected nbytes >= 0, got {nbytes}")
    _C.set_cpu_cache_limit(nbytes)
