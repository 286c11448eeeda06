"""What every backend shares without torch: the Session interface, the ExportContext a backend's ``export``
receives, and the descriptor (:class:`Backend`, with its export options declared as :func:`option` fields of a
dataclass) that says everything else about it.

A backend package (tensorrt, coreml, openvino, onnx) provides ``export.export(model, ctx: ExportContext) ->
list[str]`` (writes files into ``ctx.workdir`` and returns their names) and a ``session`` module with the Session
class that runs the artifact and returns a :class:`~biformer_edge.contract.RunResult`. Sessions import no torch, so
an artifact runs on a device that has none. Backends know graphs and runtimes, not quantization: an INT8 export gets
a model that is already fake-quantized, and the exporter has quantization check and report the graph the backend
wrote.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path

import numpy as np

from ..contract import RunResult
from ..cpu import CPU_CLASSES, DEFAULT_CPU_CLASS, check_cpu_class


class Session:
    """Runs one artifact. ``run`` takes a float32 NCHW batch of the artifact's input shape."""

    backend: str = "?"
    device: str = "cpu"

    def run(self, x: np.ndarray) -> RunResult:
        raise NotImplementedError


@dataclass
class ExportContext:
    """What a backend's ``export`` gets: where to write, what to build. ``workdir`` is a temporary directory that the
    exporter renames into place only after every step (export, checks, parity) succeeded."""

    workdir: Path
    target: str                                  # jetson | tensorrt | openvino | coreml | onnx
    precision: str                               # fp32 | fp16 | int8
    input_shape: tuple[int, int, int, int]       # (N, 3, H, W), static
    opset: int = 17
    profile: dict = field(default_factory=dict)  # the target's TOML profile (export/<target>.toml)
    options: dict = field(default_factory=dict)  # target-specific CLI options (dla_core, ios, weights_8bit, build)
    log: Callable = print                        # progress messages: log("...")
    checks: dict = field(default_factory=dict)   # structural checks: name -> {"ok": bool, "summary": str}
    routing: str = "qar"                         # INT8: qar keeps the router island FP32, naive quantizes into it
    graph_io: dict | None = None                 # set by an export whose graph is not normalised input -> logits
    #                                              (the manifest's graph_io: contract.graph_io_problem)
    # INT8 exports whose runtime calibrates activations itself (Core ML W8A8 on a Mac): the calibration batches
    # (B, N, 3, H, W), rendered or read on first call, as the graph takes its input (a DeepStream graph's hook
    # converts them to pixels). None: the export has no calibration data.
    calibration: Callable[[], np.ndarray] | None = None


# ------------------------------------------------------------------------------------------------------ descriptors
# What biformer_edge.targets knows of a backend without importing it: one Backend per backend package, in its
# ``__init__`` (torch-free, runtime-free). The export module and the Session class load by name when asked for.

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Option:
    """One export option of a backend, from a field of its options dataclass (:func:`option`): the biformer-export
    flag ``--<name with dashes>``, its check, and the default an export records when the flag is not given."""

    name: str                                    # key of ExportRequest.options and of the manifest's "options"
    default: object                              # None: nothing recorded unless given
    help: str                                    # the flag's help (the CLI puts "<targets>:" in front)
    type: Callable | None = None                 # argparse type of the value; None: an on/off switch
    precisions: tuple[str, ...] = PRECISIONS     # the precisions it changes: dropped for the others
    only: str = ""                               # the error when it is given for another precision
    check: Callable[[object, str], None] | None = None   # (value, precision): UserError for a value it refuses

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def option(default=None, help: str = "", **spec):
    """A field of a backend's options dataclass; ``spec``: the other :class:`Option` fields."""
    return field(default=default, metadata={"option": {"help": help, **spec}})


def options_of(cls) -> tuple[Option, ...]:
    """The :class:`Option` of every field of an options dataclass, in field order."""
    return tuple(Option(f.name, f.default, **f.metadata["option"]) for f in fields(cls)) if cls else ()


@dataclass(frozen=True)
class CPUOptions:
    """The export options of the backends whose INT8 artifacts run on x86 CPUs (openvino, onnx)."""

    cpu: str = option(DEFAULT_CPU_CLASS, f"the x86 CPU class the INT8 weights are made for, one of "
                      f"{', '.join(CPU_CLASSES)} (default {DEFAULT_CPU_CLASS}: accurate on every class)",
                      type=str, precisions=("int8",), check=lambda value, precision: check_cpu_class(value),
                      only="--cpu only changes INT8 exports (the CPU class their INT8 weights are made for)")


@dataclass(frozen=True)
class Backend:
    """One backend: the runtime that runs its artifacts (``name``, what ``--backend`` takes) and, where it exports,
    what its export writes and takes. ``module`` is the package under ``biformer_edge.backends``: ``export.py``
    writes the artifact (imports torch), ``session.py`` holds the Session class (torch-free)."""

    name: str                                    # the runtime: tensorrt, coreml, openvino, onnxruntime, torch
    module: str                                  # biformer_edge.backends.<module>; the manifest's "backend"
    package: str                                 # import name of the runtime library
    install_hint: str                            # how to install it (and export_packages): the one table of hints
    file: str | None                             # the artifact file the Session runs (None: the FP32 model itself)
    session: str                                 # the Session class: "<module of the package>.<class>"
    aliases: tuple[str, ...] = ()
    files: tuple[str, ...] = ()                  # what its export writes, always (optional files: not listed)
    options: type | None = None                  # the options dataclass of its exports (fields from option())
    export_packages: tuple[str, ...] = ()        # the other libraries its export needs, installed with the same hint
    platform: str | None = None                  # the only sys.platform it runs on (None: any)
    platform_reason: str = ""                    # why it does not run elsewhere
    requires: tuple[tuple[str, str], ...] = ()   # further libraries its Session needs: (import name, install hint)
    device_check: str | None = None              # "<module>.<function>": why no device can run it here, or None
    no_file: str = ""                            # the message for an artifact without ``file`` (default: not in it)
    hint_option: str | None = None               # the Session keyword that takes a precision hint ([parity] hint)

    def _load(self, dotted: str):
        module, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(f"{__package__}.{self.module}.{module}"), attr)

    def unavailable(self) -> str | None:
        """Why this runtime cannot run on this machine at all (whatever the artifact), or None. Imports no runtime:
        the platform, then the package (find_spec), then the device check where one is named."""
        if self.platform and sys.platform != self.platform:
            return self.platform_reason
        if importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed ({self.install_hint})"
        return self._load(self.device_check)() if self.device_check else None

    def install_hints(self) -> dict[str, str]:
        """Import name -> how to install it, for every library this backend uses."""
        return {name: self.install_hint for name in (self.package, *self.export_packages)} | dict(self.requires)

    def missing_file(self) -> str:
        return self.no_file or f"no {self.file} in the artifact"

    def version(self) -> str | None:
        """The installed version of the runtime library (its distribution's metadata, no import), or None."""
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return None

    def session_class(self) -> type[Session]:
        return self._load(self.session)

    def export_module(self):
        """The module whose ``export(model, ctx)`` writes this backend's artifact (imports torch: export side)."""
        return importlib.import_module(f"{__package__}.{self.module}.export")

    def option_specs(self) -> tuple[Option, ...]:
        return options_of(self.options)

    def read_options(self, options: dict | None):
        """``options`` (an export's, as the manifest records them) as this backend's options dataclass: what is not
        in them takes its default."""
        known = {o.name for o in self.option_specs()}
        return self.options(**{k: v for k, v in (options or {}).items() if k in known and v is not None})

    def parity_hint(self, profile: dict, precision: str, override: str | None = None) -> str | None:
        """The precision hint this runtime's Session computes a ``precision`` artifact in when parity checks it:
        ``override`` (biformer-parity --ov-precision), else the profile's ``[parity] hint`` for that precision;
        None for runtimes that take no hint."""
        if self.hint_option is None:
            return None
        return override or profile.get("parity", {}).get("hint", {}).get(precision)
