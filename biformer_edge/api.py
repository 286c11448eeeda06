"""The thin Python API; the CLIs call the same functions. ``load`` and ``check_parity`` on a stored reference need
no torch (a Jetson or a Mac runs them with the runtime alone); ``export`` does."""
from __future__ import annotations

from pathlib import Path

from .backends.base import Session
from .errors import UserError
from .manifest import read_verified
from .targets import first_runnable, open_session


def export(model, target: str, precision: str | None = None, output: str | Path | None = None, **kwargs) -> Path:
    """Export ``model`` (a registered name or a module from create_model) and return the artifact directory.
    Keyword arguments are those of ``biformer_edge.exporter.ExportRequest`` (checkpoint, input_size, batch, calib,
    force, parity, data, options, ...)."""
    from .exporter import ExportRequest
    from .exporter import export as run_export
    out, _ = run_export(ExportRequest(target=target, precision=precision, model=model,
                                      output=str(output) if output else None, **kwargs), log=lambda _msg: None)
    return out


def load(artifact: str | Path, backend: str | None = None, **options) -> Session:
    """A Session for the best runtime that can run ``artifact`` here (or the one named), after verifying the
    artifact's files against its manifest."""
    artifact = Path(artifact)
    manifest = read_verified(artifact)
    if backend:
        return open_session(backend, artifact, manifest, **options)
    name, reasons = first_runnable(artifact)
    if name:
        return open_session(name, artifact, manifest, **options)
    raise UserError(f"no runtime here can run {artifact}: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()))


__all__ = ["export", "load"]
