"""Safe writes, for every file the tools write: atomic (a temporary beside the target, then a rename), never
through or over a symbolic link, deterministic where it matters (``save_npz``), one writer per output (``output_lock``),
several files committed together or not at all (``AtomicOutputs``), and never onto one of the run's own inputs
(``check_not_input``). What an artifact directory is and how it is replaced is ``artifact.py``'s; what its manifest
holds is ``manifest.py``'s.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .contract import MANIFEST
from .errors import UserError


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
        os.chmod(tmp, 0o666 & ~umask())
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


def umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            os.chmod(tmp, 0o666 & ~umask())
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
