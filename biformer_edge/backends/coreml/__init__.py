"""Core ML: ``.mlpackage`` (ML Program) export from ``torch.export``, structural checks that run on Linux, and a
Session that runs only on macOS (Core ML's predict needs Apple's Core ML framework; coremltools converts anywhere).
By side: :mod:`.rules` (the router op names and the structural checks of a package, torch-free), :mod:`.export`
(torch.export, conversion, 8-bit weights/activations), :mod:`.session` (``CoreMLSession``, torch-free).

FP16 programs keep each BRA router in FP32: coremltools' ``FP16ComputePrecision`` pass takes an ``op_selector``, and
the router ops are left out of it by name. coremltools names each MIL op after its ``torch.export`` node ('mean_1',
'topk'), which carries no module scope, so the export renames the nodes that run inside a router (their
``nn_module_stack`` names a ``RegionRouter``) to ``<module path>__<node>``, e.g.
``backbone_stages_0_0_attn_router__mean``; ``rules.is_router_op`` selects by that name. The program then casts q/k up
to fp32 before pooling and ``topk`` sees fp32 affinities.

This module is the descriptor :data:`COREML` and the export options: it imports no runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...contract import MLPACKAGE
from ...errors import UserError
from ..base import Backend, option

IOS_VERSIONS = (16, 17, 18)   # minimum deployment targets the export converts for


def _ios(value, precision: str) -> None:
    if value not in IOS_VERSIONS:
        raise UserError(f"--ios must be 16, 17 or 18, not {value}")


@dataclass(frozen=True)
class CoreMLOptions:
    """What a Core ML export takes."""

    ios: int = option(16, "minimum iOS (16, 17, 18)", type=int, check=_ios)
    weights_8bit: bool | None = option(None, "int8 per-channel weights")


COREML = Backend(
    "coreml", "coreml", package="coremltools", install_hint="pip install 'biformer-edge[coreml]'", file=MLPACKAGE,
    session="session.CoreMLSession", aliases=("mlpackage",), files=(MLPACKAGE,), options=CoreMLOptions,
    platform="darwin", platform_reason="Core ML runs only on macOS (the program was checked structurally here)")
