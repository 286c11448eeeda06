"""Target profiles (one TOML file per target) and the on-device build-script templates.

Installed as ``biformer_edge.profiles``; read them with ``biformer_edge.targets.load_profile``."""
