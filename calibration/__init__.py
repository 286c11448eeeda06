"""Calibration recipes for INT8 exports (TOML: source, sample count, method, preprocessing). This folder is installed
as the package ``biformer_edge.calibration_recipes``; ``biformer_edge.quant.calibration`` reads it."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def recipe_file(name: str) -> Path:
    return HERE / f"{name}.toml"
