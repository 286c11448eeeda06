"""Metadata lives in setup.cfg. This file only adds the one package that lives outside biformer_edge/: the target
profiles, kept in the top-level export/ folder and installed as biformer_edge.profiles (wheel, sdist, editable)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["biformer_edge", "biformer_edge.*"]) + ["biformer_edge.profiles"],
      package_dir={"biformer_edge.profiles": "export"})
