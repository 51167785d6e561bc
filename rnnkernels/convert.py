"""One-call conversion of an existing model: rnnkernels.convert(model) / revert(model).

Our modules subclass the torch.nn ones and add no state of their own, so a module is
converted by changing its class in place. Everything else stays as it was, because it is
the same object: parameters (so an optimizer built before the conversion still holds
them), buffers, hooks, device, dtype, training mode, and every reference to the module,
shared or not. A module with parametrizations (torch.nn.utils.parametrize, e.g.
weight_norm) has a class that torch.nn generated from its original one; it gets the same
generated class rebuilt on the new base.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from . import nn as rk

_TO_OURS: dict[type, type] = {
    nn.RNN: rk.RNN, nn.LSTM: rk.LSTM, nn.GRU: rk.GRU,
    nn.RNNCell: rk.RNNCell, nn.LSTMCell: rk.LSTMCell, nn.GRUCell: rk.GRUCell,
}
_TO_TORCH: dict[type, type] = {ours: theirs for theirs, ours in _TO_OURS.items()}

# Parametrized classes rebuilt on a new base, cached so that repeated conversions of
# modules with the same parametrized class share one class, as torch.nn's do.
_rebuilt: dict[tuple[type, type], type] = {}


def _scripted_kind(module: nn.Module) -> type | None:
    """torch.nn's class of a layer's scriptable form (Note [scripting] in _scripted.py),
    which torch.jit.script leaves in the model it scripted; None for other modules."""
    from ._scripted import ScriptableLSTM, ScriptableRNN

    if type(module) is ScriptableLSTM:
        return nn.LSTM
    if type(module) is ScriptableRNN:
        return nn.GRU if module.mode == "GRU" else nn.RNN
    return None


def _target_class(module: nn.Module, mapping: dict[type, type]) -> type | None:
    cls = type(module)
    if cls in mapping:
        return mapping[cls]
    kind = _scripted_kind(module)
    if kind is not None:
        return _TO_OURS[kind] if mapping is _TO_OURS else kind
    if parametrize.is_parametrized(module) and len(cls.__bases__) == 1 \
            and cls.__bases__[0] in mapping:
        # torch.nn's parametrize: class Parametrized<Name>(<original class>) whose dict
        # holds one property per parametrized tensor.
        key = (cls, mapping[cls.__bases__[0]])
        if key not in _rebuilt:
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            _rebuilt[key] = type(f"Parametrized{key[1].__name__}", (key[1],), body)
        return _rebuilt[key]
    return None


def _swap(model: nn.Module, mapping: dict[type, type]) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for module in list(model.modules()):  # modules() yields a shared module once
        target = _target_class(module, mapping)
        if target is not None:
            module.__class__ = target
    return model


def convert(model: nn.Module) -> nn.Module:
    """Makes every torch.nn RNN, LSTM, GRU, RNNCell, LSTMCell and GRUCell inside `model`
    (`model` itself included) run rnnkernels' kernels, in place; returns `model`.

    Weights, device, dtype, training mode, hooks and parametrizations are kept; the
    state_dict is unchanged, so checkpoints load either way. Subclasses of those
    modules (other than torch.nn's parametrized ones) are left alone: their forward may
    do something ours does not.
    """
    return _swap(model, _TO_OURS)


# Options beyond torch.nn, with the value that torch.nn's forward computes.
_TORCH_EQUIVALENT_OPTIONS = {"layer_norm": False, "zoneout_h": 0.0, "zoneout_c": 0.0,
                             "recurrent_dropconnect": 0.0}


def revert(model: nn.Module) -> nn.Module:
    """The inverse of convert: rnnkernels' modules inside `model` become torch.nn's again,
    in place; returns `model`.

    Raises ValueError, changing nothing, when a module uses an option torch.nn does not
    have (layer_norm, zoneout, recurrent_dropconnect): torch.nn's forward would silently
    compute another model.
    """
    if isinstance(model, nn.Module):
        for name, module in model.named_modules():
            if _target_class(module, _TO_TORCH) is None:
                continue
            used = {k: getattr(module, k) for k, off in _TORCH_EQUIVALENT_OPTIONS.items()
                    if getattr(module, k, off) != off}
            if used:
                raise ValueError(f"cannot revert {name or 'the model'} ({type(module).__name__})"
                                 f" to torch.nn: it uses {used}, which torch.nn does not have")
    return _swap(model, _TO_TORCH)
