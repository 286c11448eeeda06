"""The Core ML runtime: ``CoreMLSession`` runs model.mlpackage through Core ML's predict (macOS only). Imports no
torch."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ...contract import INPUT_NAME, RunResult
from ...errors import UserError
from ..base import Session
from .rules import _coremltools, _package_path

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


class CoreMLSession(Session):
    """Runs ``model.mlpackage`` with Core ML (macOS only). ``compute_units``: CPU_ONLY (default, the parity
    reference on a Mac), CPU_AND_GPU, CPU_AND_NE or ALL (the Neural Engine computes in fp16 whatever the program
    says)."""

    backend = "coreml"

    def __init__(self, artifact_dir: str | Path, manifest: dict | None = None, compute_units: str = "CPU_ONLY"):
        if sys.platform != "darwin":
            raise UserError("Core ML runs only on macOS: copy the artifact to a Mac and run biformer-parity there; "
                            "on Linux the program was checked structurally")
        units = str(compute_units).upper()
        if units not in COMPUTE_UNITS:
            raise UserError(f"unknown Core ML compute units '{compute_units}': use one of {', '.join(COMPUTE_UNITS)}")
        ct = _coremltools()
        path = _package_path(artifact_dir)
        self.manifest = manifest or {}
        self.compute_units = units
        self.device = units.lower()
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units))
        spec = self.model.get_spec()
        self.output_names = [o.name for o in spec.description.output]

    def run(self, x: np.ndarray):
        result = self.model.predict({INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return RunResult.from_outputs(self.output_names, [np.asarray(result[n]) for n in self.output_names])
