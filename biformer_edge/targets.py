"""The one registry of export targets and the runtimes that run their artifacts. Everything else asks here.

A *target* is what ``biformer-export --target`` names: the backend module that writes the artifact, the files it
writes, its profile (``export/<target>.toml``: precisions, thresholds, parity runtimes) and the runtime it is meant
for on the device. A *runtime* is something that runs an artifact file behind the ``Session`` interface
(``backends/base.py``): onnxruntime, TensorRT, OpenVINO, Core ML, and PyTorch for the FP32 model itself.

This module imports neither torch nor any runtime: a Jetson or a Mac loads artifacts through it without torch.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .contract import BUILD_PY, BUILD_SCRIPT, ENGINE_FILE, IR_BIN, IR_XML, MLPACKAGE, ONNX_FILE
from .errors import UserError, short_reason
from .profiles import profile_file

DEFAULT_MODEL = "biformer_seg_demo"            # the built-in default: its weights ship with the package


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str                  # biformer_edge.backends.<module> holds the Session class
    session_class: str
    file: str | None             # the artifact file it runs (None: runs the FP32 PyTorch model)
    package: str                 # import name of the runtime library
    aliases: tuple[str, ...] = ()
    install_hint: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    backend: str                 # biformer_edge.backends.<backend> writes the artifact
    files: tuple[str, ...]       # what the export writes (optional ones in brackets in docs)
    device_runtime: str          # the runtime the artifact is made for
    aliases: tuple[str, ...] = ()
    description: str = ""
    int8: str | None = "qdq"     # "qdq": calibrated explicit Q/DQ; "weights": 8-bit weights, float activations


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("tensorrt", "tensorrt", "TensorRTSession", ENGINE_FILE, "tensorrt", ("trt", "engine"),
            "on a Jetson 'sudo apt install python3-libnvinfer', on a GPU host NVIDIA's tensorrt wheel"),
    Runtime("coreml", "coreml", "CoreMLSession", MLPACKAGE, "coremltools", ("mlpackage",),
            "pip install 'biformer-edge[coreml]' on a Mac"),
    Runtime("openvino", "openvino", "OpenVINOSession", IR_XML, "openvino", ("ov",),
            "pip install 'biformer-edge[openvino]'"),
    Runtime("onnxruntime", "onnx", "OnnxSession", ONNX_FILE, "onnxruntime", ("ort", "onnx"),
            "pip install 'biformer-edge[onnx]'"),
    Runtime("torch", "pytorch", "TorchSession", None, "torch", ("pytorch",), "pip install torch"),
)}

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("jetson", "tensorrt", (ONNX_FILE, BUILD_SCRIPT, BUILD_PY), "tensorrt", (),
           "Jetson / TensorRT 10-11 (engine built on the device)"),
    Target("tensorrt", "tensorrt", (ONNX_FILE, BUILD_SCRIPT, BUILD_PY), "tensorrt",
           ("trt", "engine"), "TensorRT 10-11 on an NVIDIA GPU"),
    Target("openvino", "openvino", (IR_XML, IR_BIN), "openvino", ("ov",), "OpenVINO IR for Intel"),
    Target("coreml", "coreml", (MLPACKAGE,), "coreml", ("mlpackage", "ios"), "Core ML mlprogram",
           int8="weights"),  # W8A8 calibrates through Core ML's predict, which runs only on macOS
    Target("onnx", "onnx", (ONNX_FILE,), "onnxruntime", ("ort", "onnxruntime"), "ONNX for onnxruntime"),
)}

# Most specific runtime first: the one an artifact was made for, where it can run, before the generic ones.
AUTO_ORDER = ("tensorrt", "coreml", "openvino", "onnxruntime")


def _resolve(name: str, table: dict, kind: str):
    key = str(name).lower()
    for item in table.values():
        if key == item.name or key in item.aliases:
            return item
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unsupported {kind} '{name}': {hint}choose one of {', '.join(table)}")


def resolve_target(name: str) -> Target:
    return _resolve(name, TARGETS, "target")


def resolve_runtime(name: str) -> Runtime:
    return _resolve(name, RUNTIMES, "backend")


def profile_path(target: str) -> Path:
    return profile_file(resolve_target(target).name)


def _read_profile(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"target profile {path} is unreadable ({exc}): reinstall biformer-edge") from None


def _merge(base: dict, own: dict) -> dict:
    """``own`` over ``base``: tables merge key by key, ``own``'s values win."""
    merged = dict(base)
    for key, value in own.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def load_profile(target: str) -> dict:
    """The target's profile: ``export/<target>.toml`` over the profiles it builds on. A profile names the one below
    it with a top-level ``base = "<name>"`` (``export/<name>.toml``, ending at ``export/base.toml``, which holds what
    every target shares unless its profile says otherwise); tables merge key by key, the upper profile's values win.
    """
    path = profile_path(target)
    chain: list[tuple[Path, dict]] = []
    while True:
        profile = _read_profile(path)
        chain.append((path, profile))
        base = profile.pop("base", None)
        if base is None:
            break
        if not isinstance(base, str) or not base.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"target profile {path}: base = {base!r} is not a profile name: reinstall biformer-edge")
        path = profile_file(base)
        if path in [p for p, _ in chain]:
            names = " -> ".join(p.stem for p, _ in chain)
            raise UserError(f"target profile {chain[-1][0]}: base = '{base}' closes a loop ({names} -> {base}): "
                            f"reinstall biformer-edge")
        if not path.is_file():
            raise UserError(f"target profile {chain[-1][0]} builds on base '{base}', but there is no {path}: "
                            f"reinstall biformer-edge")
    merged: dict = {}
    for _, profile in reversed(chain):
        merged = _merge(merged, profile)
    return merged


def backend_module(target: Target | str):
    """The module that exports ``target`` (imports torch: export side only)."""
    target = target if isinstance(target, Target) else resolve_target(target)
    return importlib.import_module(f"biformer_edge.backends.{target.backend}")


def runtime_unavailable(name: str) -> str | None:
    """Why runtime ``name`` cannot run on this machine at all (whatever the artifact), or None."""
    rt = resolve_runtime(name)
    if rt.name == "coreml" and sys.platform != "darwin":
        return "Core ML runs only on macOS (the program was checked structurally here)"
    if importlib.util.find_spec(rt.package) is None:
        return f"{rt.package} is not installed ({rt.install_hint})"
    if rt.name == "tensorrt":
        from .backends.tensorrt import cuda_unavailable
        return cuda_unavailable()
    return None


def unavailable_reason(name: str, artifact_dir: str | Path) -> str | None:
    """Why runtime ``name`` cannot run this artifact here, or None when it can."""
    rt = resolve_runtime(name)
    if rt.file is not None and not (Path(artifact_dir) / rt.file).exists():
        if rt.name == "tensorrt":
            return f"no {ENGINE_FILE}: build it on the device with ./{BUILD_SCRIPT}"
        return f"no {rt.file} in the artifact"
    return runtime_unavailable(rt.name)


def first_runnable(artifact_dir: str | Path) -> tuple[str | None, dict[str, str]]:
    """The first runtime of AUTO_ORDER that can run the artifact here, and why each one before it cannot."""
    reasons = {}
    for name in AUTO_ORDER:
        reason = unavailable_reason(name, artifact_dir)
        if reason is None:
            return name, reasons
        reasons[name] = reason
    return None, reasons


def session_class(name: str):
    rt = resolve_runtime(name)
    return getattr(importlib.import_module(f"biformer_edge.backends.{rt.module}"), rt.session_class)


def open_session(name: str, artifact_dir: str | Path, manifest: dict | None = None, **options):
    """A Session of runtime ``name`` on an artifact directory (not for 'torch', which runs a model)."""
    rt = resolve_runtime(name)
    if rt.file is None:
        raise UserError(f"'{rt.name}' runs the FP32 model, not an artifact: choose one of {', '.join(AUTO_ORDER)}")
    artifact_dir = Path(artifact_dir)
    reason = unavailable_reason(rt.name, artifact_dir)
    if reason:
        raise UserError(f"cannot run {rt.name} on {artifact_dir}: {reason}")
    cls = session_class(rt.name)
    try:
        return cls(artifact_dir, manifest, **options)
    except (UserError, TypeError):
        raise
    except Exception as exc:  # the runtime's own loader refused the file (corrupt, truncated, other version)
        detail = short_reason(exc, 160)
        raise UserError(f"{rt.name} cannot load {artifact_dir / rt.file} ({detail}): re-export the artifact, or "
                        f"check that this {rt.package} is the version it was exported for") from None
