"""The sessions a bench or profile worker opens: one place for both (``worker.py`` and ``profilers.py``)."""
from __future__ import annotations


def session_options(runtime: str, threads: int, hint: str | None) -> dict:
    """The keyword options ``runtime``'s Session takes, out of threads and a precision hint."""
    import inspect

    from ..targets import session_class
    params = inspect.signature(session_class(runtime)).parameters
    options = {"threads": threads} if "threads" in params else {}
    if hint is not None and "precision_hint" in params:
        options["precision_hint"] = hint
    return options


def open_worker_session(spec: dict):
    """(session, model bytes or None, the precision it computes in)."""
    from ..targets import RUNTIMES
    runtime = spec["backend"]
    if RUNTIMES[runtime].file is None:  # torch runs the model, from the weights the parent saved
        import torch
        torch.set_num_threads(spec["threads"])

        from ..backends.pytorch.session import TorchSession
        from ..models import create_model
        model = create_model(spec["model"], pretrained=False)
        model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True))
        if spec["precision"] == "fp16":
            model = model.half()
        size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        return TorchSession(model.eval()), size, spec["precision"].replace("fp", "f")
    from ..manifest import read_manifest
    from ..targets import open_session
    from .plan import hint_name
    session = open_session(runtime, spec["artifact"], read_manifest(spec["artifact"]),
                           **session_options(runtime, spec["threads"], spec.get("hint")))
    precision = getattr(session, "inference_precision", "") or ""
    return session, None, hint_name(precision) if precision else ""
