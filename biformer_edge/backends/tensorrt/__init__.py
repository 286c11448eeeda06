"""TensorRT (10.x and 11.x; 8.6 for FP32 artifacts): an ONNX that TensorRT's parser accepts, the scripts that build
the engine on the device (docs/tensorrt.md: what builds on which JetPack), an in-process build where TensorRT and a
GPU are present, and a Session that runs ``model.engine``.

TensorRT cannot be installed on CPU machines (its libraries are not on PyPI's CPU wheels), so everything except the
build and the Session works with onnx alone. By side:

- :mod:`.rules`: what TensorRT's ONNX parser accepts (opsets, operators, TopK and rank limits, no INT8 into the
  router): ``check_onnx`` and ``assert_tensorrt_ready``. Torch-free.
- :mod:`.export`: the artifact (model.onnx, build_engine.sh/.py, model.engine with ``--build``, INT8 model.pt2).
- :mod:`.session`: ``TensorRTSession`` and the cuda-python bindings it runs on. Torch-free.

This module is the descriptor :data:`TENSORRT` and the export options: it imports no runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...argtypes import positive_int
from ...contract import BUILD_PY, BUILD_SCRIPT, ENGINE_FILE, ONNX_FILE
from ...errors import UserError
from ..base import Backend, option

MIN_WORKSPACE_MIB = 64
CUDA_HINT = "pip install cuda-python; on a Jetson the jetson extra with its JetPack's constraints file"


def _dla_core(value, precision: str) -> None:
    """Refuses DLA for every value, with the reason build_engine.py states (its DLA_REFUSAL; build_engine.sh holds the
    same text): docs/tensorrt.md#dla has the sources. The template is loaded here, not at import, to keep this module
    light."""
    from ...profiles import load_template_module
    raise UserError(f"--dla-core: {load_template_module(BUILD_PY).DLA_REFUSAL}")


def _workspace(value, precision: str) -> None:
    if not (type(value) is int and value >= MIN_WORKSPACE_MIB):
        raise UserError(f"--workspace-mib must be a whole number of MiB >= {MIN_WORKSPACE_MIB}, not {value}")


@dataclass(frozen=True)
class TensorRTOptions:
    """What a TensorRT export takes (``targets.TARGETS`` says which of these the jetson and tensorrt targets take;
    timing_cache and tf32 no target takes: build_engine.py's --timing-cache and --tf32 set them on the device)."""

    dla_core: int | None = option(None, "not offered: refused with the reason (docs/tensorrt.md#dla)", type=int,
                                  check=_dla_core)
    workspace_mib: int = option(2048, "builder workspace", type=positive_int, check=_workspace)
    build: bool | None = option(None, "build model.engine here (needs TensorRT)")
    deepstream: bool | None = option(None, "the graph DeepStream's nvinfer runs (RGB 0-255 in, softmax at the input "
                                     "size out, INT32 routing) and deepstream/ (nvinfer config, labels, pipelines): "
                                     "docs/deepstream.md")
    timing_cache: str | None = option(None, "the engine build's timing cache (in-process builds)")
    tf32: bool | None = option(None, "allow TF32 for FP32 layers (in-process builds)")


TENSORRT = Backend(
    "tensorrt", "tensorrt", package="tensorrt",
    install_hint="on a Jetson 'sudo apt install python3-libnvinfer', on a GPU host NVIDIA's tensorrt wheel",
    file=ENGINE_FILE, session="session.TensorRTSession", aliases=("trt", "engine"),
    files=(ONNX_FILE, BUILD_SCRIPT, BUILD_PY), options=TensorRTOptions,
    requires=(("cuda", CUDA_HINT),), device_check="session.cuda_unavailable",
    no_file=f"no {ENGINE_FILE}: build it on the device with ./{BUILD_SCRIPT}")
