"""The OpenVINO runtime: ``OpenVINOSession`` runs model.xml on the CPU plugin with an explicit precision hint (the
package doc says why), and what the compiled model executed each layer in. Imports no torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...contract import IR_XML, RunResult
from ...errors import UserError
from ..base import Session
from .rules import NATIVE_CAPABILITY, _openvino, canonical_hint, cpu_capabilities, snippets_hazard

# Runtime-model layer types that do a model's multiply-accumulate work (what OpenVINOSession.executed counts).
RUNTIME_COMPUTE_KERNELS = ("Convolution", "FullyConnected", "MatMul", "ScaledDotProductAttention", "Deconvolution")

SKIP_KERNELS = ("Reorder", "Const", "Input", "Parameter", "Output", "Result")


def runtime_layers(compiled_model) -> list[dict]:
    """The nodes OpenVINO's plugin executes (``compiled_model.get_runtime_model()``), in execution order: ``kernel``
    (rt_info ``layerType``, e.g. FullyConnected, Convolution, Subgraph), ``precision`` (``runtimePrecision``: the
    precision the kernel computes in, e.g. i8/u8 for INT8 kernels, f32, bf16), ``outputs`` (``outputPrecisions``)
    and ``names``: the original layers fused into it (``originalLayersNames``)."""
    rows = []
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key):
            return info[key].astype(str) if key in info else ""
        names = [n for n in get("originalLayersNames").split(",") if n]
        rows.append({"name": op.get_friendly_name(), "kernel": get("layerType"), "precision": get("runtimePrecision"),
                     "outputs": get("outputPrecisions"), "names": names})
    return rows


def executed_precision(compiled_model, layers: list[str] | None = None) -> dict[str, dict]:
    """What OpenVINO executed each layer in: original layer name -> ``{"precision", "kernel", "outputs"}`` of the
    runtime node that computes it (:func:`runtime_layers`; reorders and constants are skipped). With
    ``layers`` (the model's own op names, e.g. an IR's friendly names), only those, found by exact name, else by a
    fused name inside their scope (``<layer>/DequantizationMultiply``: the plugin's low-precision transformations
    rename the op they quantize), else by the name without a trailing ``/WithoutBiases`` (the op a bias Add was split
    from); a layer found nowhere is left out."""
    exact: dict[str, dict] = {}
    for row in runtime_layers(compiled_model):
        if row["kernel"] in SKIP_KERNELS:
            continue
        entry = {"precision": row["precision"], "kernel": row["kernel"], "outputs": row["outputs"]}
        for name in row["names"]:
            exact.setdefault(name, entry)
    if layers is None:
        return exact
    out = {}
    for layer in layers:
        entry = exact.get(layer)
        if entry is None:
            entry = next((v for k, v in exact.items() if k.startswith(layer + "/")), None)
        if entry is None and layer.endswith("/WithoutBiases"):
            entry = exact.get(layer.rsplit("/", 1)[0])
        if entry is not None:
            out[layer] = entry
    return out




def _model_path(artifact: str | Path) -> Path:
    path = Path(artifact)
    xml = path / IR_XML if path.is_dir() else path
    if not xml.is_file():
        raise UserError(f"no OpenVINO model at {xml}: export one with 'biformer-export --target openvino'")
    return xml


class OpenVINOSession(Session):
    """Runs ``model.xml`` on the CPU plugin with ``INFERENCE_PRECISION_HINT`` set explicitly, ``PERFORMANCE_HINT=
    LATENCY`` and optionally ``INFERENCE_NUM_THREADS``.

    ``precision_hint``: ``f32`` (default), ``f16`` or ``bf16`` are passed to the plugin as they are (it may compute
    an f16 hint in bf16 or f32, a bf16 hint in f32: see ``inference_precision``); ``auto`` computes in f16 where the
    CPU does so natively and in f32 elsewhere, never in bf16 (package doc). Attributes: ``requested_hint`` (what was
    asked, canonical spelling), ``precision_hint`` (the hint set), ``inference_precision`` (what the compiled model
    reports it computes in).

    ``snippets``: None (default) disables the CPU plugin's Snippets fusion only for models with the pattern it
    miscomputes (:func:`snippets_hazard`); True/False force it on/off. ``config`` records what was compiled with."""

    backend = "openvino"
    device = "cpu"

    def __init__(self, artifact_dir: str | Path, manifest: dict | None = None, precision_hint: str = "f32",
                 threads: int | None = None, snippets: bool | None = None):
        requested = canonical_hint(precision_hint)
        ov = _openvino()
        core = ov.Core()
        self.manifest = manifest or {}
        self.requested_hint = requested
        ov_model = core.read_model(str(_model_path(artifact_dir)))
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if snippets is False or (snippets is None and snippets_hazard(ov_model)):
            config["SNIPPETS_MODE"] = "DISABLE"
        hint = requested
        if requested == "auto":
            hint = "f16" if NATIVE_CAPABILITY["f16"] in cpu_capabilities(core) else "f32"
        self.compiled = core.compile_model(ov_model, "CPU", {**config, "INFERENCE_PRECISION_HINT": hint})
        if requested == "auto" and hint != "f32" and self._computes() != hint:
            # listed as native but not honoured for this model: the rule says f32, not what the plugin chose
            hint = "f32"
            self.compiled = core.compile_model(ov_model, "CPU", {**config, "INFERENCE_PRECISION_HINT": hint})
        self.precision_hint = hint
        self.config = {"INFERENCE_PRECISION_HINT": hint, **config}
        # What the plugin actually computes in: an f16 hint runs in bf16 or f32 on CPUs without native f16.
        self.inference_precision = self._computes()
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(self.compiled.inputs[0].get_shape())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def executed(self) -> dict:
        """What the CPU plugin compiled the compute layers into (its runtime model): counts by runtime precision
        (i8/u8 are INT8 kernels) and, for the INT8 ones, the oneDNN kernels by name, which carry the ISA they were
        chosen for (``jit_avx2_I8``, ``brgconv_avx512_core_vnni``, ``brgemm_avx512_amx``...)."""
        from collections import Counter
        by_precision, int8_kernels = Counter(), Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or info["layerType"].astype(str) not in RUNTIME_COMPUTE_KERNELS:
                continue
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            by_precision[precision] += 1
            if precision in ("i8", "u8"):
                int8_kernels[info["primitiveType"].astype(str) if "primitiveType" in info else "?"] += 1
        return {"by_precision": dict(sorted(by_precision.items())), "int8_kernels": dict(sorted(int8_kernels.items()))}

    def _computes(self) -> str:
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(x.shape)} does not match the OpenVINO model's {self.input_shape}")
        result = self.request.infer({0: x})
        values = [np.array(result[o]) for o in self.compiled.outputs]
        return RunResult.from_outputs(self.output_names, values)
