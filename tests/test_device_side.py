"""The device side runs without torch: on a Jetson (JetPack's Python, TensorRT, numpy) or a Mac (coremltools), a user
loads an artifact, re-checks its parity against the stored reference and runs the demo without PyTorch installed.
Proved here by running those paths in a subprocess where ``import torch`` fails."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from biformer_edge.cli import export_main

SRC = str(Path(__file__).resolve().parent.parent)
NO_TORCH = "import sys; sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=SRC, timeout=300)


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def artifact(request, tmp_path_factory):
    pytest.importorskip("onnxruntime" if request.param == "onnx" else "openvino")
    out = tmp_path_factory.mktemp("device") / request.param
    with pytest.raises(SystemExit) as exc:
        export_main(["--target", request.param, "--input-size", "64", "64", "--output", str(out)])
    assert exc.value.code == 0
    return out


def test_the_guard_really_blocks_torch():
    proc = run_without_torch("import torch")
    assert proc.returncode != 0 and "import of torch halted" in proc.stderr


def test_parity_recheck_without_torch(artifact):
    proc = run_without_torch(f"""
        from biformer_edge.cli import parity_main
        parity_main([{str(artifact)!r}])
    """)
    assert proc.returncode == 0, proc.stderr
    assert "Verdict: **pass**" in proc.stdout and proc.stderr == ""


def test_load_and_run_without_torch(artifact):
    proc = run_without_torch(f"""
        import numpy as np
        import biformer_edge as be
        session = be.load({str(artifact)!r})
        out = session.run(np.zeros((1, 3, 64, 64), np.float32))
        assert out.logits.shape[:2] == (1, 6) and len(out.routing) == 4, out.logits.shape
        print(session.backend)
    """)
    assert proc.returncode == 0, proc.stderr


def test_export_without_torch_is_one_line(tmp_path):
    proc = run_without_torch(f"""
        from biformer_edge.cli import export_main
        export_main(["--target", "onnx", "--output", {str(tmp_path / "o")!r}])
    """)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "torch is not installed" in proc.stderr
    assert list(tmp_path.iterdir()) == []
