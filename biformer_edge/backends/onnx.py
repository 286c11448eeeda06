"""ONNX: TorchScript exporter at a fixed opset (17 by default), onnxsim, onnx.checker; onnxruntime Session."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .base import INPUT_NAME, Session
from .tracing import RoutingOutputs


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int, int], opset: int = 17,
                fp16: bool = False, simplify: bool = True):
    """Trace ``model`` (plus its routing outputs) to ``path``. FP16 halves the weights and activations but keeps
    each BRA router in FP32 (explicit Casts in the graph). Returns the onnx.ModelProto written."""
    import onnx

    wrapper = RoutingOutputs(model).eval()
    dtype = torch.float16 if fp16 else torch.float32
    wrapper = wrapper.to(dtype)
    x = torch.zeros(input_shape, dtype=dtype)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation + tracer warnings on Python ints
        torch.onnx.export(wrapper, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=wrapper.output_names(), do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    if simplify:
        import onnxsim
        simplified, ok = onnxsim.simplify(proto)
        if ok:
            proto = simplified
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def ort_session_options(threads: int | None = None, config: dict | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    for key, value in (config or {}).items():  # e.g. {"session.intra_op.allow_spinning": "0"}
        opts.add_session_config_entry(key, value)
    return opts


class OnnxSession(Session):
    backend = "onnxruntime"

    def __init__(self, artifact: str | Path, manifest: dict | None = None, threads: int | None = None,
                 providers: list[str] | None = None, config: dict | None = None):
        path = Path(artifact) / "model.onnx" if Path(artifact).is_dir() else Path(artifact)
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install 'biformer-edge[onnx]'") from None
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        self.sess = ort.InferenceSession(str(path), ort_session_options(threads, config), providers=providers)
        self.device = "cuda" if self.sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input = self.sess.get_inputs()[0]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.input_dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32

    def run(self, x: np.ndarray):
        values = self.sess.run(self.output_names, {self.input.name: np.asarray(x, dtype=self.input_dtype)})
        return self.split_outputs(self.output_names, values)


def graph_summary(proto) -> str:
    """'N nodes, TopK xK, Gather xG' for logs and manifests."""
    from collections import Counter
    ops = Counter(n.op_type for n in proto.graph.node)
    return f"{len(proto.graph.node)} nodes, TopK x{ops['TopK']}, Gather x{ops['Gather']}"


def export(model: nn.Module, ctx) -> list[str]:
    proto = export_onnx(model, ctx.workdir / "model.onnx", ctx.input_shape, ctx.opset, fp16=ctx.precision == "fp16")
    ctx.checks["onnx_checker"] = {"ok": True, "summary": f"onnx.checker full_check passed; {graph_summary(proto)}"}
    return ["model.onnx"]
