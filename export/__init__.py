"""Target profiles (one TOML file per target: precisions, thresholds, parity runtimes, device notes) and the
on-device build-script templates. This folder is installed as the package ``biformer_edge.profiles`` (wheel, sdist
and editable installs alike); read profiles with ``biformer_edge.targets.load_profile``."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def profile_file(target: str) -> Path:
    return HERE / f"{target}.toml"


def template_path(name: str) -> Path:
    return HERE / "templates" / name
