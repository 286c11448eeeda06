"""What the bench times: each model built once, each artifact written once by the exporter (the same code
``biformer-export`` runs, without its parity check) into the bench's temporary directory."""
from __future__ import annotations

import copy
from pathlib import Path

from ..errors import UserError, first_line
from .plan import Config, export_request, export_target, runtime_files


class Artifacts:
    def __init__(self, root: Path, random_weights: bool, calib_samples: int | None = None):
        self.root, self.random_weights, self.calib_samples = root, random_weights, calib_samples
        self.models: dict[str, object] = {}
        self.dirs: dict[tuple, Path] = {}

    def model(self, name: str):
        """The model, with its shipped weights unless ``--random-weights`` (create_model seeds random init)."""
        if name not in self.models:
            from ..models import create_model, get_spec
            try:
                model = create_model(name, pretrained=not self.random_weights)
            except UserError as exc:
                if self.random_weights or not get_spec(name).shipped_weights:
                    raise
                raise UserError(f"{exc}; or pass --random-weights to bench without them") from None
            self.models[name] = model.float().eval()
        return self.models[name]

    def torch_weights(self, name: str) -> Path:
        """The model's state dict on disk, for the torch worker (which builds the model from its name)."""
        path = self.root / f"{name}-torch.pt"
        if not path.exists():
            import torch
            torch.save(self.model(name).state_dict(), path)
        return path

    def worker_inputs(self, config: Config, artifact: str | None = None) -> dict:
        """What a worker loads for ``config``: the ``--artifact`` given, else the saved weights (torch runs the model)
        or the artifact exported for it."""
        if artifact:
            return {"artifact": str(artifact)}
        if export_target(config.backend) is None:
            return {"weights": str(self.torch_weights(config.model))}
        return {"artifact": str(self.export(config, log=lambda msg: None))}

    def add_worker_inputs(self, spec: dict, row, artifact: str | None = None) -> bool:
        """Add :meth:`worker_inputs` for ``row.config`` to ``spec``; False (the row marked skipped or failed) when its
        export could not be made: one broken export must not stop a table."""
        try:
            spec.update(self.worker_inputs(row.config, artifact))
        except UserError as exc:
            row.status, row.note = "skipped", f"export: {exc}"
            return False
        except Exception as exc:  # noqa: BLE001 - any exporter failure becomes the row's note
            row.status, row.note = "failed", f"export: {type(exc).__name__}: {first_line(exc)}"
            return False
        return True

    def export(self, config: Config, log) -> Path:
        """The artifact directory ``config.backend`` runs, exported once per model, target, precision and shape."""
        from ..exporter import export
        target = export_target(config.backend).name
        key = (config.model, target, config.precision, config.input_shape)
        if key not in self.dirs:
            out = self.root / f"{config.model}-{target}-{config.precision}-{'x'.join(map(str, config.input_shape))}"
            # backends may cast the module they export (FP16): give the exporter a copy
            model = copy.deepcopy(self.model(config.model))
            self.dirs[key], _ = export(export_request(model, config.backend, config.precision, config.input_shape,
                                                      output=str(out), calib_samples=self.calib_samples), log=log)
        return self.dirs[key]


def artifact_bytes(path: Path, runtime: str) -> int:
    """Bytes of the files ``runtime`` reads in artifact ``path`` (packages: every file in them)."""
    total = 0
    for name in runtime_files(runtime):
        p = Path(path) / name
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total
