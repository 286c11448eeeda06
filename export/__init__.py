"""Target profiles (one TOML file per target: precisions, thresholds, parity runtimes, device notes) and the
on-device build-script templates. This folder is installed as the package ``biformer_edge.profiles`` (wheel, sdist
and editable installs alike); read profiles with ``biformer_edge.targets.load_profile``."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def profile_file(target: str) -> Path:
    return HERE / f"{target}.toml"


def template_path(name: str) -> Path:
    return HERE / "templates" / name


def load_template_module(name: str):
    """A Python build template (e.g. build_engine.py, unrendered) as a module: the one implementation both the
    device and biformer-edge run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"biformer_edge_{Path(name).stem}", template_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
