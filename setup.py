"""Metadata lives in setup.cfg. This file only adds the two packages that live outside biformer_edge/: the target
profiles (top-level export/, installed as biformer_edge.profiles) and the calibration recipes (top-level
calibration/, installed as biformer_edge.calibration_recipes), in wheel, sdist and editable installs alike."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["biformer_edge", "biformer_edge.*"])
      + ["biformer_edge.profiles", "biformer_edge.calibration_recipes"],
      package_dir={"biformer_edge.profiles": "export", "biformer_edge.calibration_recipes": "calibration"})
