"""Unit tests of artifact, fileio and manifest: atomic writes, no link followed, containment, --force, locks."""
import json
import os

import numpy as np
import pytest

from biformer_edge import artifact as A
from biformer_edge import contract as C
from biformer_edge import fileio as F
from biformer_edge import manifest as M
from biformer_edge.errors import UserError


def make_artifact(root):
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"onnx")
    manifest = {"schema_version": 2, "generator": "biformer-edge", "model": "m", "task": "segmentation",
                "target": "onnx", "precision": "fp32", "input_shape": [1, 3, 64, 64], "files": M.file_table(root)}
    F.write_json(root / C.MANIFEST, manifest)
    return manifest


def test_write_file_replaces_atomically_and_refuses_links(tmp_path):
    F.write_file(tmp_path / "a.txt", "one")
    F.write_file(tmp_path / "a.txt", b"two")
    assert (tmp_path / "a.txt").read_text() == "two" and sorted(os.listdir(tmp_path)) == ["a.txt"]
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(UserError, match="symbolic link"):
        F.write_file(tmp_path / "link", "evil")
    assert (tmp_path / "victim").read_text() == "keep"


def test_save_npz_is_byte_reproducible(tmp_path):
    arrays = {"b": np.arange(5), "a": np.ones((2, 2), np.float32)}
    F.save_npz(tmp_path / "1.npz", arrays)
    F.save_npz(tmp_path / "2.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with np.load(tmp_path / "1.npz") as z:
        assert (z["b"] == np.arange(5)).all()


def test_file_table_skips_manifest_and_reports(tmp_path):
    make_artifact(tmp_path / "x")
    (tmp_path / "x" / "parity.json").write_text("{}")
    assert set(M.file_table(tmp_path / "x")) == {"model.onnx"}


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../b", "", "a\\b", "./model.onnx"])
def test_contained_path_refuses_escapes(tmp_path, rel):
    with pytest.raises(UserError):
        M.contained_path(tmp_path, rel)


def test_contained_path_refuses_links_on_the_way(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    assert M.contained_path(tmp_path, "real/f") == tmp_path / "real" / "f"
    with pytest.raises(UserError, match="symbolic link"):
        M.contained_path(tmp_path, "via/f")


def test_verify_files_reports_edits_and_missing(tmp_path):
    m = make_artifact(tmp_path / "x")
    assert M.verify_files(tmp_path / "x", m) == []
    (tmp_path / "x" / "model.onnx").write_bytes(b"ONNX")
    assert M.verify_files(tmp_path / "x", m) == ["model.onnx differs from the manifest"]
    (tmp_path / "x" / "model.onnx").unlink()
    assert M.verify_files(tmp_path / "x", m) == ["model.onnx is missing"]


def test_is_our_artifact(tmp_path):
    make_artifact(tmp_path / "x")
    assert A.is_our_artifact(tmp_path / "x") is None
    (tmp_path / "x" / "model.engine").write_bytes(b"built on the device")
    assert A.is_our_artifact(tmp_path / "x") is None
    (tmp_path / "x" / "mine.txt").write_text("user data")
    assert "mine.txt" in A.is_our_artifact(tmp_path / "x")
    (tmp_path / "plain").mkdir()
    assert "manifest" in A.is_our_artifact(tmp_path / "plain")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / C.MANIFEST).write_text(json.dumps({"model": "x"}))
    assert A.is_our_artifact(tmp_path / "fake") is not None


def test_atomic_directory_failure_removes_temporary_and_created_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with A.atomic_directory(out) as work:
            (work / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_success_and_force(tmp_path):
    out = tmp_path / "out"
    with A.atomic_directory(out) as work:
        make_artifact(work / "inner")  # build an artifact in a subfolder, then move it up: a realistic content
        for p in (work / "inner").iterdir():
            p.rename(work / p.name)
        (work / "inner").rmdir()
    assert (out / "model.onnx").is_file() and not (out / C.IN_PROGRESS).exists()
    with pytest.raises(UserError, match="already exists"):
        with A.atomic_directory(out):
            pass
    with A.atomic_directory(out, force=True) as work:
        make_artifact(work / "inner")
        for p in (work / "inner").iterdir():
            p.rename(work / p.name)
        (work / "inner").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_lock_is_exclusive_and_leaves_no_file(tmp_path):
    out = tmp_path / "out"
    with F.output_lock(out):
        with pytest.raises(UserError, match="another biformer-export"):
            with F.output_lock(out):
                pass
    assert list(tmp_path.iterdir()) == []
    with F.output_lock(out):
        pass


def test_atomic_outputs_commit_discard_and_protected_inputs(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"input")
    with pytest.raises(UserError, match="also an input"):
        F.AtomicOutputs([video], protected=[video])
    (tmp_path / "hard.mp4").hardlink_to(video)
    with pytest.raises(UserError, match="also an input"):
        F.AtomicOutputs([tmp_path / "hard.mp4"], protected=[video])
    with F.AtomicOutputs([tmp_path / "o.mp4", tmp_path / "o.json"], protected=[video]) as outs:
        outs.temp(tmp_path / "o.mp4").write_bytes(b"v")
        outs.temp(tmp_path / "o.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.mp4", "in.mp4"]  # no commit: nothing kept
    with F.AtomicOutputs([tmp_path / "o.mp4"]) as outs:
        outs.temp(tmp_path / "o.mp4").write_bytes(b"v")
        outs.commit()
    assert (tmp_path / "o.mp4").read_bytes() == b"v" and video.read_bytes() == b"input"


def test_manifest_problem_names_the_field():
    good = {"schema_version": 2, "model": "m", "task": "segmentation", "target": "onnx", "precision": "fp32",
            "input_shape": [1, 3, 8, 8], "files": {"a": {"sha256": "0" * 64, "bytes": 1}}}
    assert M.manifest_problem(good) is None
    assert "input_shape" in M.manifest_problem({**good, "input_shape": [1, 3, 8]})
    assert "files" in M.manifest_problem({**good, "files": {}})
    assert "schema_version" in M.manifest_problem({**good, "schema_version": 99})
    assert M.manifest_problem([1, 2]) == "not a JSON object"
