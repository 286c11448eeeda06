"""Artifact directories: atomic creation, manifest with hashes, deterministic npz."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError
from .models.checkpoint import sha256_file

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_table(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``root`` except the manifest (mlpackage directories included)."""
    table = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            table[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return table


def read_manifest(artifact_dir: str | Path) -> dict:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{artifact_dir} is not a biformer-edge artifact (no {MANIFEST}): pass the directory "
                        f"biformer-export wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt ({exc.msg}): re-export the artifact") from None


def verify_files(artifact_dir: Path, manifest: dict) -> list[str]:
    """Files whose hash differs from the manifest (a half-copied or edited artifact)."""
    problems = []
    for rel, info in manifest.get("files", {}).items():
        p = artifact_dir / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            problems.append(f"{rel} differs from the manifest")
    return problems


def check_output_dir(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise UserError(f"{output} already exists: pass --force to overwrite it, or choose --output")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a directory: choose another --output")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {output.parent} ({exc.strerror}): choose a writable --output") from None
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"cannot write to {output.parent}: choose a writable --output")


@contextlib.contextmanager
def atomic_directory(output: Path):
    """Yield a temporary sibling of ``output``; on success it replaces ``output``, on any failure (Ctrl-C included)
    it is removed and ``output`` is left as it was."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; an artifact is shared like any other directory
    try:
        yield tmp
        old = None
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
        tmp.rename(output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
