"""Artifact directories: what belongs to one, how it is written, and how it is verified before it is trusted.

An artifact is the directory biformer-export writes: the model files, ``reference.npz``, the build scripts and
``manifest.json``, whose ``files`` table holds the sha256 and size of every one of them. Reports of a check
(``parity.json``, ``parity.md``) and what the device builds later (``model.engine``, ``timing.cache``, layer reports)
are *not* in the table: a re-check or an engine build leaves the artifact valid.

Safety rules, all enforced here:

* writes are atomic (a temporary sibling directory, renamed into place) and never follow or replace a symbolic link;
* ``--force`` replaces only an earlier biformer-edge artifact holding nothing but what the tool writes;
* one export at a time per output (a lock beside it); temporaries of dead processes are removed at the next export;
* a manifest's paths stay inside the artifact, every listed file is a regular file, no link points out of it;
* Ctrl-C, SIGTERM and errors (a full disk included) leave nothing behind, not even an empty ``artifacts/``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from .contract import DEVICE_FILES, MANIFEST, REPORT_FILES, ROUTER_PRECISION
from .errors import UserError

SCHEMA_VERSION = 2
GENERATOR = "biformer-edge"
IN_PROGRESS = ".biformer-export-in-progress"                    # marks a temporary directory as ours
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------------------------------------------- files


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_file(path: Path, data: bytes | str) -> None:
    """Write ``path`` atomically without following a link: a temporary file beside it, then ``os.replace``. An
    existing symbolic link at ``path`` is refused, never written through nor replaced."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link: biformer-edge never writes through links; remove it and retry")
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    write_file(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so the same arrays always give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            item = io.BytesIO()
            np.lib.format.write_array(item, np.asanyarray(arrays[name]), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), item.getvalue())
    write_file(path, buf.getvalue())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ------------------------------------------------------------------------------------------------------- manifest


def file_table(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``root`` except the manifest and check reports."""
    table = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and rel not in (MANIFEST, IN_PROGRESS, *REPORT_FILES):
            table[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return table


def read_manifest(artifact_dir: str | Path) -> dict:
    """The manifest of an artifact directory, with its fields checked (one line and exit 2 when malformed)."""
    path = Path(artifact_dir) / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{artifact_dir} is not a biformer-edge artifact (no {MANIFEST}): pass the directory "
                        f"biformer-export wrote")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is corrupt ({getattr(exc, 'msg', exc)}): re-export the artifact") from None
    problem = manifest_problem(manifest)
    if problem:
        raise UserError(f"{path} is malformed ({problem}): re-export the artifact")
    return manifest


def manifest_problem(m) -> str | None:
    """What is wrong with a manifest's fields, or None. Only what the tools rely on is checked."""
    if not isinstance(m, dict):
        return "not a JSON object"

    def positive_ints(v, n):
        return isinstance(v, list) and len(v) == n and all(type(d) is int and d > 0 for d in v)

    checks = {
        "schema_version": lambda v: type(v) is int and 1 <= v <= SCHEMA_VERSION,
        "model": lambda v: isinstance(v, str) and v != "",
        "task": lambda v: v in ("classification", "segmentation"),
        "target": lambda v: isinstance(v, str) and v != "",
        "precision": lambda v: v in ("fp32", "fp16", "int8"),
        "input_shape": lambda v: positive_ints(v, 4) and v[1] == 3,
        "files": lambda v: isinstance(v, dict) and len(v) > 0,
    }
    for key, ok in checks.items():
        if key not in m:
            return f"no '{key}'" + (" table: its files cannot be verified" if key == "files" else "")
        if not ok(m[key]):
            return f"'{key}' is {json.dumps(m[key])[:60]}"
    if m.get("num_classes") is not None and not (type(m["num_classes"]) is int and m["num_classes"] > 0):
        return f"'num_classes' is {m['num_classes']!r}"
    if m.get("routing_blocks") is not None and not (type(m["routing_blocks"]) is int and m["routing_blocks"] >= 0):
        return f"'routing_blocks' is {m['routing_blocks']!r}"
    problem = _optional_fields_problem(m)
    if problem:
        return problem
    for rel, info in m["files"].items():
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])
                and type(info.get("bytes")) is int and info["bytes"] >= 0):
            return f"the entry for '{rel}' in 'files' is not a sha256 and a size"
    return None




def _optional_fields_problem(m: dict) -> str | None:
    """The fields parity and the tools read with ``.get``: absent or null is allowed (older artifacts), anything
    else must have the type written at export. ``routing`` picks the parity thresholds, so it must also agree with
    ``router_precision`` and with what the quantization record says."""
    def text(v):
        return isinstance(v, str) and v != ""

    def sha(v):
        return isinstance(v, str) and _SHA256.fullmatch(v) is not None

    checks = {
        "routing": lambda v: isinstance(v, str) and v in ROUTER_PRECISION,
        "router_precision": lambda v: isinstance(v, str) and v in ROUTER_PRECISION.values(),
        "weights": lambda v: isinstance(v, str) and v in ("shipped", "checkpoint", "random", "in-memory"),
        "checkpoint_path": text, "checkpoint_sha256": sha, "parity_data": text, "reference_device": text,
        "quantization": lambda v: isinstance(v, dict),
        "checks": lambda v: isinstance(v, dict) and all(
            isinstance(c, dict) and type(c.get("ok", True)) is bool and isinstance(c.get("summary", ""), str)
            for c in v.values()),
    }
    for key, ok in checks.items():
        if m.get(key) is not None and not ok(m[key]):
            return f"'{key}' is {json.dumps(m[key])[:60]}"
    routing = m.get("routing")
    if routing is not None and m.get("router_precision") not in (None, ROUTER_PRECISION[routing]):
        return f"'routing' {routing} with 'router_precision' {m['router_precision']}"
    quant = m.get("quantization") or {}
    for key, want in (("routing", routing), ("router_precision", ROUTER_PRECISION.get(routing))):
        if quant.get(key) is not None and quant[key] != want:
            return f"'quantization.{key}' is {json.dumps(quant[key])[:40]} for 'routing' {json.dumps(routing)}"
    if m.get("weights") == "checkpoint" and not (text(m.get("checkpoint_path")) and sha(m.get("checkpoint_sha256"))):
        return "'weights' is checkpoint without its path and sha256"
    return None


def read_verified(artifact_dir: str | Path) -> dict:
    """The manifest of an artifact whose files all match it (the one check before trusting an artifact)."""
    manifest = read_manifest(artifact_dir)
    require_unchanged(artifact_dir, manifest)
    return manifest


def require_unchanged(artifact_dir: str | Path, manifest: dict) -> None:
    changed = verify_files(Path(artifact_dir), manifest)
    if changed:
        raise UserError(f"{artifact_dir}: {changed[0]}: copy the whole artifact directory again")


def contained_path(root: Path, rel: str) -> Path:
    """``root / rel`` for a manifest path that stays inside ``root`` and passes through no link; else UserError."""
    pure = PurePosixPath(rel)
    if (not rel or "\\" in rel or "\0" in rel or pure.is_absolute() or ".." in pure.parts or rel.startswith("~")
            or pure.as_posix() != rel):
        raise UserError(f"{root}/{MANIFEST} lists '{rel}', a path outside the artifact: the manifest was edited; "
                        f"re-export or copy the artifact again")
    path = root
    for part in pure.parts:
        path = path / part
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link: an artifact holds only regular files; copy the artifact "
                            f"again (cp -rL or scp -r)")
    return path


def outside_links(root: Path) -> list[str]:
    """Symbolic links under ``root`` that point outside it."""
    bad = []
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if target != real_root and real_root not in target.parents:
                    bad.append(p.relative_to(root).as_posix())
    return bad


def verify_files(artifact_dir: Path, manifest: dict) -> list[str]:
    """Problems that make an artifact untrustworthy: edited or missing files, paths leaving it (UserError at once).
    Returns files whose hash differs from the manifest (a half-copied or edited artifact)."""
    artifact_dir = Path(artifact_dir)
    links = outside_links(artifact_dir)
    if links:
        raise UserError(f"{artifact_dir}/{links[0]} is a symbolic link pointing outside the artifact: copy the "
                        f"artifact again with real files (cp -rL)")
    problems = []
    for rel, info in manifest["files"].items():
        p = contained_path(artifact_dir, rel)
        try:
            st = p.lstat()
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel} is not a regular file")
        elif st.st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            problems.append(f"{rel} differs from the manifest")
    return problems


def is_our_artifact(path: Path) -> str | None:
    """Why ``path`` is not a biformer-edge artifact that --force may replace, or None when it is one: a real directory
    with a valid manifest, every listed file unchanged since the export, and nothing else in it but the reports and
    the regular files a device build writes (no links, no other files or folders)."""
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is not a directory"
    try:
        manifest = read_manifest(path)
        changed = verify_files(path, manifest)
    except UserError as exc:
        return f"it has no valid {MANIFEST} of biformer-edge ({str(exc)[:80]})"
    if changed:
        return f"{changed[0]} since the export: move your changes out first"
    allowed = {MANIFEST, *REPORT_FILES, *DEVICE_FILES, *manifest["files"]}
    folders = {p.as_posix() for rel in manifest["files"] for p in PurePosixPath(rel).parents if str(p) != "."}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            if full.is_symlink():
                return f"it holds the link '{rel}', which biformer-export did not write"
            if name in dirnames and rel not in folders:
                return f"it holds the folder '{rel}', which biformer-export did not write"
            if name in filenames and (rel not in allowed or not full.is_file()):
                return f"it holds '{rel}', which biformer-export did not write"
    return None


# ---------------------------------------------------------------------------------------------- writing an artifact


def check_output_dir(output: Path, force: bool, verify: bool = True) -> None:
    """Refuse, before any work, an output that would overwrite or delete what the tool did not create. ``verify``:
    also prove an existing output is our unchanged artifact (hashes every file; the final rename proves it again)."""
    output = Path(output)
    resolved = Path(os.path.abspath(output))
    cwd = Path.cwd()
    if resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents or resolved == Path.home():
        raise UserError(f"--output {output} is the current, home or root directory: choose a new directory, e.g. "
                        f"--output artifacts/my-export")
    if output.is_symlink():
        raise UserError(f"--output {output} is a symbolic link: biformer-edge never replaces links; choose another "
                        f"--output")
    if output.exists():
        if not force:
            raise UserError(f"{output} already exists: pass --force to replace that earlier export, or choose "
                            f"another --output")
        why = is_our_artifact(output) if verify else None
        if why:
            raise UserError(f"--force replaces only an earlier biformer-edge artifact, and {output} is not one "
                            f"({why}): nothing was touched; choose another --output")
    parent = Path(os.path.abspath(output)).parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"cannot create {parent}: {existing} is a file; choose another --output")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {existing}: choose a writable --output")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``output`` left by killed exports (SIGKILL, power loss):
    only directories carrying our in-progress marker, written on this host by a process that no longer runs."""
    removed = []
    parent, host = output.parent, socket.gethostname()
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if not (entry.name.startswith(f".{output.name}.tmp-") or entry.name.startswith(f".{output.name}.old-")):
            continue
        marker = entry / IN_PROGRESS
        if entry.is_symlink() or not entry.is_dir() or marker.is_symlink() or not marker.is_file():
            continue
        try:
            owner_host, owner_pid = marker.read_text().split()[:2]
            pid = int(owner_pid)
        except (OSError, ValueError):
            continue
        if owner_host == host and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


LOCK_MARK = b"biformer-export lock\n"


@contextlib.contextmanager
def output_lock(output: Path, holder: str = "biformer-export"):
    """Hold an exclusive lock on ``output`` for the duration of an export: a second export to the same place fails
    at once with one line instead of silently replacing the first one's result. The lock file ``.NAME.lock`` is
    only ever truncated or removed when it is ours (it holds our mark); a user's file of that name is refused."""
    lock_path = output.parent / f".{output.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            os.write(fd, LOCK_MARK + f"{holder}\n".encode())   # the second line names the holder for others
        except FileExistsError:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue  # the holder just removed it: try again
            except OSError:
                raise UserError(f"{lock_path} exists and is not a biformer-export lock: remove or rename it") from None
            if os.read(fd, len(LOCK_MARK)) != LOCK_MARK or not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UserError(f"{lock_path} exists and is not a biformer-export lock: remove or rename it, or "
                                f"choose another --output") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode("utf-8", "replace").split("\n")[0].strip() or "biformer-export"
            os.close(fd)
            raise UserError(f"another {other} is writing {output} right now: wait for it to finish, or "
                            f"choose another --output") from None
        # the previous holder may have removed the file between our open and flock: lock the file that is there
        if os.path.lexists(lock_path) and os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(output: Path, force: bool = False):
    """Yield a temporary sibling of ``output``; on success it replaces ``output`` (only an earlier artifact, and only
    with ``force``), on any failure (Ctrl-C, SIGTERM and a full disk included) it is removed, ``output`` is left as
    it was, and parent directories created for it are removed again."""
    output = Path(output)
    parent = Path(os.path.abspath(output)).parent
    created = []
    for p in reversed((parent, *parent.parents)):
        if not p.exists():
            created.append(p)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with output_lock(output):
            remove_stale_temporaries(output)
            check_output_dir(output, force, verify=False)  # under the lock; _replace verifies before replacing
            tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-{os.getpid()}-", dir=parent))
            try:
                (tmp / IN_PROGRESS).write_text(f"{socket.gethostname()} {os.getpid()}\n")
                tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an artifact is shared like any directory
                yield tmp
                (tmp / IN_PROGRESS).unlink()
                _replace(tmp, output, force)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()  # only if still empty
        raise


def _replace(tmp: Path, output: Path, force: bool) -> None:
    if not os.path.lexists(output):
        os.rename(tmp, output)
        return
    why = is_our_artifact(output) if force else "it exists and --force was not given"
    if why:
        raise UserError(f"{output} appeared while exporting and is not an artifact --force may replace ({why})")
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.rename(output, old)
    (old / IN_PROGRESS).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        os.rename(tmp, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ single-file outputs


class AtomicOutputs:
    """Several output files (e.g. a video, its contact sheet, its JSON) written to temporaries beside their final
    paths and renamed into place together by ``commit()``; without a commit (an error, Ctrl-C, SIGTERM) the
    temporaries are removed. A final path that is a link, a directory or one of ``protected`` (the inputs) is
    refused before anything is written."""

    def __init__(self, finals: list[Path], protected: list[Path] = ()):
        self.finals = [Path(p) for p in finals]
        self.temps: dict[Path, Path] = {}
        for final in self.finals:
            if final.is_symlink():
                raise UserError(f"{final} is a symbolic link: biformer-edge never writes through links; choose "
                                f"another output path")
            if final.exists() and not final.is_file():
                raise UserError(f"{final} exists and is not a file: choose another output path")
            check_not_input(final, protected, "output")
            if not final.parent.is_dir():
                raise UserError(f"cannot write {final}: folder {final.parent} does not exist")
            if not os.access(final.parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot write to {final.parent}: choose a writable output path")

    def temp(self, final: Path) -> Path:
        """The temporary path to write instead of ``final`` (keeps the suffix: writers pick formats by it)."""
        final = Path(final)
        if final not in self.temps:
            fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix, dir=final.parent)
            os.close(fd)
            self.temps[final] = Path(tmp)
        return self.temps[final]

    def commit(self) -> None:
        for final, tmp in self.temps.items():
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, final)
        self.temps.clear()

    def discard(self) -> None:
        for tmp in self.temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.temps.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.discard()  # after commit() there is nothing left to discard
        return False


def check_not_input(output: str | Path, inputs, what: str) -> None:
    """The one rule every writer follows (export and QAT --output, parity --junit, the video demo's outputs): an
    output is none of the run's ``inputs`` (compared by resolved path and by device and inode, so another spelling
    or a hard link is caught), lies inside no input folder and holds no input, and lies inside no artifact directory
    (an artifact holds only what biformer-export wrote; a foreign file would stop --force from replacing it)."""
    output = Path(output)
    real, ident = Path(os.path.realpath(output)), _identity(output)
    sources = [Path(p) for p in inputs if p is not None and str(p) != ""]
    for src in sources:
        if real == Path(os.path.realpath(src)) or ident is not None and ident == _identity(src):
            raise UserError(f"{what} {output} is also an input of this run ({src}): choose another path (it would "
                            f"overwrite its own input)")
    for folder in real.parents:
        if (folder / MANIFEST).is_file():
            raise UserError(f"{what} {output} is inside the artifact {folder}: write it elsewhere (an artifact holds "
                            f"only what biformer-export wrote)")
    for src in sources:
        resolved = Path(os.path.realpath(src))
        if resolved in real.parents:
            raise UserError(f"{what} {output} is inside the input folder {src}: choose a path outside it")
        if real in resolved.parents:
            raise UserError(f"{what} {output} holds the input {src}: choose another path")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
