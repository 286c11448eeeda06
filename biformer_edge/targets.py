"""The one registry of export targets and the runtimes that run their artifacts. Everything else asks here.

A *target* is what ``biformer-export --target`` names: the backend that writes the artifact, the export options it
takes, its profile (``export/<target>.toml``: precisions, thresholds, parity runtimes) and the runtime it is meant
for on the device. A *runtime* is something that runs an artifact file behind the ``Session`` interface
(``backends/base.py``): onnxruntime, TensorRT, OpenVINO, Core ML, and PyTorch for the FP32 model itself. Both are
assembled from the backends' descriptors (``biformer_edge.backends.BACKENDS``: files, options, install hints,
availability), whose export and session modules load by name only when asked for.

This module imports neither torch nor any runtime: a Jetson or a Mac loads artifacts through it without torch.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .backends import BACKENDS, Backend, Option, Session
from .contract import PIXELS, graph_input
from .errors import UserError, short_reason
from .profiles import profile_file

DEFAULT_MODEL = "biformer_seg_demo"            # the built-in default: its weights ship with the package


@dataclass(frozen=True)
class Target:
    name: str
    backend: str                 # biformer_edge.backends.<backend> writes the artifact
    device_runtime: str          # the runtime the artifact is made for
    aliases: tuple[str, ...] = ()
    description: str = ""
    int8: str | None = "qdq"     # "qdq": calibrated explicit Q/DQ; "weights": 8-bit weights, float activations
    options: tuple[str, ...] = ()   # the backend's export options this target takes (biformer-export flags)

    @property
    def files(self) -> tuple[str, ...]:
        """What the export writes (optional files, e.g. model.engine with --build, not listed)."""
        return backend_of(self).files


# Most specific runtime first: the one an artifact was made for, where it can run, before the generic ones.
RUNTIMES: dict[str, Backend] = {b.name: b for b in BACKENDS}

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("jetson", "tensorrt", "tensorrt", (), "Jetson / TensorRT 10-11, 8.6 FP32 only (engine built on the device)",
           options=("dla_core", "workspace_mib", "build", "deepstream")),
    Target("tensorrt", "tensorrt", "tensorrt", ("trt", "engine"), "TensorRT 10-11, 8.6 FP32 only, on an NVIDIA GPU",
           options=("workspace_mib", "build")),
    Target("openvino", "openvino", "openvino", ("ov",), "OpenVINO IR for Intel", options=("cpu",)),
    Target("coreml", "coreml", "coreml", ("mlpackage", "ios"), "Core ML mlprogram",
           int8="weights",  # W8A8 calibrates through Core ML's predict, which runs only on macOS
           options=("ios", "weights_8bit")),
    Target("onnx", "onnx", "onnxruntime", ("ort", "onnxruntime"), "ONNX for onnxruntime", options=("cpu",)),
)}

AUTO_ORDER = tuple(name for name, rt in RUNTIMES.items() if rt.file is not None)


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


def resolve_runtime(name: str) -> Backend:
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


def backend_of(target: Target | str) -> Backend:
    """The descriptor of the backend that exports ``target``."""
    target = target if isinstance(target, Target) else resolve_target(target)
    return next(b for b in BACKENDS if b.module == target.backend)


def backend_module(target: Target | str):
    """The module that exports ``target`` (imports torch: export side only)."""
    return backend_of(target).export_module()


def target_options(target: Target | str) -> tuple[Option, ...]:
    """The export options ``target`` takes, in its order."""
    target = target if isinstance(target, Target) else resolve_target(target)
    specs = {o.name: o for o in backend_of(target).option_specs()}
    return tuple(specs[name] for name in target.options)


def check_options(target: Target | str, precision: str, given: dict | None) -> dict:
    """The options an export of ``target`` in ``precision`` records and uses: every option the target takes at its
    default, the given ones (not None) over them. UserError for an option the target does not take, one given for a
    precision it does not change, or a value it refuses; an option with a default a precision does not change is
    dropped. Options with a default are checked first."""
    target = target if isinstance(target, Target) else resolve_target(target)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    specs = target_options(target)
    unsupported = sorted(k for k, v in given.items() if v is not False and k not in target.options)
    if unsupported:
        flag = unsupported[0].replace("_", "-")
        raise UserError(f"--{flag} does not apply to --target {target.name} (its options: "
                        f"{', '.join(o.flag for o in specs) or 'none'})")
    options = {**{o.name: o.default for o in specs if o.default is not None}, **given}
    for spec in sorted(specs, key=lambda o: o.default is None):
        if spec.name not in options:
            continue
        if precision not in spec.precisions:
            if spec.name in given:
                raise UserError(spec.only)
            del options[spec.name]
        elif spec.check is not None:
            spec.check(options[spec.name], precision)
    return options


def option_flags() -> list[tuple[Option, tuple[str, ...]]]:
    """Each export option some target takes, once, with the targets that take it: biformer-export's target flags."""
    flags, seen = [], set()
    for backend in BACKENDS:
        for spec in backend.option_specs():
            takers = tuple(t.name for t in TARGETS.values() if spec.name in t.options)
            if takers and spec.name not in seen:
                seen.add(spec.name)
                flags.append((spec, takers))
    return flags


def install_hints() -> dict[str, str]:
    """Import name -> how to install it, for every library a backend uses (the one table of install hints)."""
    return {name: hint for b in BACKENDS for name, hint in b.install_hints().items()}


def runtime_unavailable(name: str) -> str | None:
    """Why runtime ``name`` cannot run on this machine at all (whatever the artifact), or None."""
    return resolve_runtime(name).unavailable()


def unavailable_reason(name: str, artifact_dir: str | Path) -> str | None:
    """Why runtime ``name`` cannot run this artifact here, or None when it can."""
    rt = resolve_runtime(name)
    if rt.file is not None and not (Path(artifact_dir) / rt.file).exists():
        return rt.missing_file()
    return rt.unavailable()


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
    return resolve_runtime(name).session_class()


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
        session = cls(artifact_dir, manifest, **options)
    except (UserError, TypeError):
        raise
    except Exception as exc:  # the runtime's own loader refused the file (corrupt, truncated, other version)
        detail = short_reason(exc, 160)
        raise UserError(f"{rt.name} cannot load {artifact_dir / rt.file} ({detail}): re-export the artifact, or "
                        f"check that this {rt.package} is the version it was exported for") from None
    graph_io = (manifest or {}).get("graph_io")
    return PixelInputSession(session, graph_io) if graph_io and graph_io.get("input") == PIXELS else session


class PixelInputSession(Session):
    """The Session of a graph that takes RGB pixels 0..255 (its manifest's graph_io; a DeepStream graph): it takes the
    model's normalised input like every Session, so parity, the benchmark and the video demo feed every artifact
    alike, and hands the graph ``x * std + mean``. Everything else is the wrapped Session's."""

    def __init__(self, session: Session, graph_io: dict):
        self.session, self.graph_io = session, graph_io

    @property
    def backend(self) -> str:   # Session's class attributes would shadow __getattr__
        return self.session.backend

    @property
    def device(self) -> str:
        return self.session.device

    def run(self, x):
        return self.session.run(graph_input(x, self.graph_io))

    def __getattr__(self, name):
        return getattr(self.session, name)
