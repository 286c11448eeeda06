"""Artifact directories: whether a directory is one that ``--force`` may replace, and how one is written: a temporary
sibling directory, renamed into place only when every step succeeded.

Safety rules, all enforced here and in ``fileio.py`` / ``manifest.py``:

* writes are atomic (a temporary sibling directory, renamed into place) and never follow or replace a symbolic link;
* ``--force`` replaces only an earlier biformer-edge artifact holding nothing but what the tool writes;
* one export at a time per output (a lock beside it); temporaries of dead processes are removed at the next export;
* a manifest's paths stay inside the artifact, every listed file is a regular file, no link points out of it;
* Ctrl-C, SIGTERM and errors (a full disk included) leave nothing behind, not even an empty ``artifacts/``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path, PurePosixPath

from .contract import DEVICE_FILES, IN_PROGRESS, MANIFEST, REPORT_FILES
from .errors import UserError
from .fileio import output_lock, pid_alive, umask
from .manifest import read_manifest, verify_files


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
        if owner_host == host and not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


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
                tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; an artifact is shared like any directory
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
