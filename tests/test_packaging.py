"""The wheel and the sdist carry the target profiles and build templates (kept in the top-level export/ folder and
installed as ``biformer_edge.profiles``, no symlink), and the sdist is complete enough to build and test."""
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("build")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def test_no_symlink_is_tracked():
    files = subprocess.run(["git", "ls-files", "-s"], capture_output=True, text=True, cwd=ROOT).stdout
    assert not [line for line in files.splitlines() if line.startswith("120000")]


def test_wheel_carries_profiles_and_templates(dists, tmp_path):
    wheel, _ = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in ("jetson", "tensorrt", "openvino", "coreml", "onnx", "base", "qdq"):   # base, qdq: what they build on
        assert f"biformer_edge/profiles/{target}.toml" in names
    assert {"biformer_edge/profiles/templates/build_engine.sh", "biformer_edge/profiles/templates/build_engine.py",
            "biformer_edge/weights/biformer_seg_demo.pt", "biformer_edge/weights/biformer_seg_demo_qat.pt"} <= names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import biformer_edge.targets as t, biformer_edge.profiles as p; "
            "assert t.load_profile('jetson')['thresholds']['fp16']['routing'] > 0; "  # base.toml's, via qdq.toml
            "assert p.template_path('build_engine.sh').is_file(); print(t.profile_path('onnx'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "site") in proc.stdout  # read from the wheel's copy, not from this checkout


def test_sdist_builds_a_wheel_and_its_tests_run(dists, tmp_path):
    _, sdist = dists
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    src = next(tmp_path.iterdir())
    assert (src / "export" / "jetson.toml").is_file() and (src / "tests" / "test_metrics.py").is_file()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "w"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    zipfile.ZipFile(next((tmp_path / "w").glob("*.whl"))).extractall(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_metrics.py",
                           "tests/test_artifact.py"], capture_output=True, text=True, cwd=src, timeout=600,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert " passed" in proc.stdout
