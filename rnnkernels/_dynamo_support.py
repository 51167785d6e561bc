"""torch.compile of models holding rnnkernels' layers, without torch._dynamo flags.

Note [compile without allow_rnn]
Dynamo refuses every instance of nn.RNN/GRU/LSTM unless torch._dynamo.config.allow_rnn
is set (an isinstance check in VariableBuilder.wrap_module, torch/_dynamo/variables/
builder.py; torch 2.13 reads the flag nowhere else). Our classes subclass those so that
isinstance(m, nn.LSTM) holds for users, and so inherited the refusal. We wrap
VariableBuilder.wrap_module: for an instance of our classes the flag is on while Dynamo
wraps that one module, for anything else (torch.nn's own modules included) the call is
unchanged. The isinstance check itself cannot tell ours apart (isinstance is the point
of subclassing), and setting the flag globally would change how torch.nn's modules
compile, so the scope is the wrap of our module. The wrapper is installed when Dynamo's
builder module is imported (a post-import hook), so `import rnnkernels` does not import
Dynamo (about 1.2 s); should a torch release rename the method, nothing is patched and
Dynamo's own error, which names allow_rnn, is what the user sees.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_BUILDER = "torch._dynamo.variables.builder"


def _patch(builder_module) -> bool:
    builder = getattr(builder_module, "VariableBuilder", None)
    wrap_module = getattr(builder, "wrap_module", None)
    config = getattr(builder_module, "config", None)
    if wrap_module is None or config is None or not hasattr(config, "allow_rnn"):
        return False
    if getattr(wrap_module, "_rnnkernels_scoped_allow_rnn", False):
        return True

    def wrap_module_of_rnnkernels(self, value):
        from .nn import GRU, LSTM, RNN

        if isinstance(value, (LSTM, GRU, RNN)) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return wrap_module(self, value)
        return wrap_module(self, value)

    wrap_module_of_rnnkernels._rnnkernels_scoped_allow_rnn = True
    wrap_module_of_rnnkernels.__wrapped__ = wrap_module
    builder.wrap_module = wrap_module_of_rnnkernels
    return True


class _PatchBuilderOnImport(importlib.abc.MetaPathFinder):
    """Finds Dynamo's builder module with the regular path finder and patches it once
    its code has run."""

    def find_spec(self, name, path, target=None):
        if name != _BUILDER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if _BUILDER in sys.modules:
        _patch(sys.modules[_BUILDER])
    elif not any(isinstance(f, _PatchBuilderOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchBuilderOnImport())
