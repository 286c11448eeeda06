"""What the test modules share: running a console entry point in-process, the one-line error rule every refusal
follows, the small input size the CLI tests export at, and a quick ONNX artifact to damage."""
import shutil
from pathlib import Path

import pytest

SIZE = ["--input-size", "64", "64"]   # small and quick: the default model's smallest size without padded regions


def run_cli(main, args) -> int:
    """Run a console entry point (export_main, parity_main, qat_main...) with ``args``; returns its exit status."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


def one_error_line(capsys) -> str:
    """The refusal rule: exactly one line on stderr, starting 'error: ', no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def onnx_artifact(export_main, tmp_path_factory, name: str) -> Path:
    """An ONNX artifact of the default model (shipped weights) at :data:`SIZE`."""
    out = tmp_path_factory.mktemp(name) / "demo"
    assert run_cli(export_main, ["--target", "onnx", *SIZE, "--output", out]) == 0
    return out


def copy_of(artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst
