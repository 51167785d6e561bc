"""Deployment runtimes as peers of a case (`--peers onnxruntime openvino`).

Our module is exported to ONNX the way a deploying user would (torch.onnx.export with
dynamo=False: our layers trace to ONNX's native LSTM/GRU/RNN ops, Note [tracing] in
rnnkernels/functional.py), and the graph runs in ONNX Runtime (float32) and OpenVINO
(float32, and bfloat16 through its precision hint where the CPU has AVX512-BF16 or AMX),
each with the run's thread count, timed interleaved with ours and torch.nn. Peers time CPU
inference of dense float32 input only; other cases have none.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from .cases import Case
from .env import cpu_flags

PEERS = ("onnxruntime", "openvino")


def applies(case: Case) -> bool:
    return (case.device == "cpu" and case.mode == "inference"
            and case.dtype in ("float32", "int8") and not case.packed and not case.is_step_cell)


class _Holder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


def torch_passes(case: Case, reference: torch.nn.Module, inputs, make_pass):
    """An int8 case's torch peers: torch.nn in bfloat16 (module and input converted) and
    torch's dynamic int8 (torch.ao.quantization.quantize_dynamic of the float32 module;
    torch has none for RNN or proj_size, which the error says). {name: pass}, {name: why}."""
    import copy
    from dataclasses import replace

    if case.dtype != "int8":
        return {}, {}
    passes, errors = {}, {}
    bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    bf16_inputs = replace(inputs, x=inputs.x.to(torch.bfloat16), state=None if inputs.state is None
                          else (inputs.state.to(torch.bfloat16) if isinstance(inputs.state, torch.Tensor)
                                else tuple(s.to(torch.bfloat16) for s in inputs.state)))
    passes["nn_bf16"] = make_pass(replace(case, dtype="bfloat16"), bf16, bf16_inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            from torch.ao.quantization import quantize_dynamic

            # torch.ao swaps children, never the model itself: hold the module in one.
            dynamic = quantize_dynamic(_Holder(copy.deepcopy(reference)), {type(reference)},
                                       dtype=torch.qint8)
        if type(dynamic.inner) is type(reference):
            raise RuntimeError(f"torch has no dynamic int8 {type(reference).__name__}")
        run = make_pass(replace(case, dtype="float32"), dynamic, inputs)
        run()
        passes["torch_int8"] = run
    except Exception as err:  # noqa: BLE001  (its failure is the result)
        errors["torch_int8"] = f"{type(err).__name__}: {err}"
    return passes, errors


def _onnx_model(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's advice on batch sizes and tracing
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"])
    return buffer.getvalue()


def build(case: Case, model: torch.nn.Module, x: torch.Tensor,
          wanted: tuple[str, ...]) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """({peer name: a pass running the exported graph on x}, {peer name: why it has none}).
    Names: onnxruntime, openvino, openvino_bf16."""
    if not wanted or not applies(case):
        return {}, {}
    try:
        graph = _onnx_model(model, x)
    except Exception as err:  # noqa: BLE001  (the export's failure is the result)
        return {}, {name: f"ONNX export failed: {err}" for name in wanted}
    return runtime_passes(graph, x.numpy(), case.threads, wanted)


def runtime_passes(graph: bytes, feed, threads: int, wanted: tuple[str, ...],
                   bf16: bool = True) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """An ONNX graph (serialized) loaded in each wanted runtime with `threads` threads:
    ({name: a pass running it on feed (one array, the graph's first input) and returning its
    first output}, {name: why it has none}). Names: onnxruntime, openvino and, with bf16 on
    a CPU with AVX512-BF16 or AMX, openvino_bf16 (OpenVINO's bfloat16 precision hint)."""
    passes, errors = {}, {}
    if "onnxruntime" in wanted:
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # Its workers otherwise spin after each run and take the cores from the passes
            # timed next (ours and torch.nn's times then doubled, with a 40-90% spread).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            feeds = {session.get_inputs()[0].name: feed}
            passes["onnxruntime"] = lambda: session.run(None, feeds)[0]
        except Exception as err:  # noqa: BLE001
            errors["onnxruntime"] = f"{type(err).__name__}: {err}"
    if "openvino" in wanted:
        try:
            import openvino as ov

            core = ov.Core()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(graph)
                read = core.read_model(str(path))
            hints = {"f32": "openvino"}
            if bf16 and {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):
                hints["bf16"] = "openvino_bf16"
            for precision, name in hints.items():
                compiled = core.compile_model(read, "CPU", {
                    "INFERENCE_NUM_THREADS": threads,
                    "INFERENCE_PRECISION_HINT": precision})
                request = compiled.create_infer_request()
                passes[name] = (lambda r: lambda: r.infer({0: feed})[0])(request)
        except Exception as err:  # noqa: BLE001
            errors["openvino"] = f"{type(err).__name__}: {err}"
    return passes, errors
