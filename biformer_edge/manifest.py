"""``manifest.json``: the one definition of what an artifact's manifest holds (:class:`Manifest`), the export writes
it from that definition and every tool reads it back through the same checks, and the verification that an
artifact's files are the ones it lists.

The ``files`` table holds the sha256 and size of every file the export wrote except the manifest itself. Reports of a
check (``parity.json``, ``parity.md``, the margin plot) and what the device builds later (``model.engine``,
``timing.cache``, engine layer dumps) are not in it: a re-check or an engine build leaves the artifact valid.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .contract import IN_PROGRESS, MANIFEST, REPORT_FILES, ROUTER_PRECISION, graph_io_problem
from .errors import UserError
from .fileio import sha256_file, write_json

SCHEMA_VERSION = 2
GENERATOR = "biformer-edge"
_SHA256 = re.compile(r"[0-9a-f]{64}")
TASKS = ("classification", "segmentation")
PRECISIONS = ("fp32", "fp16", "int8")
WEIGHTS = ("shipped", "checkpoint", "random", "in-memory")


def _text(v) -> bool:
    return isinstance(v, str) and v != ""


def _sha(v) -> bool:
    return isinstance(v, str) and _SHA256.fullmatch(v) is not None


def _shape(v) -> bool:
    return isinstance(v, list) and len(v) == 4 and all(type(d) is int and d > 0 for d in v) and v[1] == 3


def _checks(v) -> bool:
    return isinstance(v, dict) and all(isinstance(c, dict) and type(c.get("ok", True)) is bool
                                       and isinstance(c.get("summary", ""), str) for c in v.values())


def _entry(check=None, required: bool = False, omit_none: bool = False):
    """A manifest field: ``check`` (None: anything) holds whenever the field is there and not null; a ``required``
    field must be there (older artifacts may lack the others); ``omit_none``: not written while None."""
    return dataclasses.field(default=None, metadata={"check": check, "required": required, "omit_none": omit_none})


@dataclass
class Manifest:
    """What ``manifest.json`` holds. Fields the tools rely on carry a check; :func:`manifest_problem` applies them to
    any manifest read back, and :func:`write_manifest` to the one being written."""

    schema_version: int = _entry(lambda v: type(v) is int and 1 <= v <= SCHEMA_VERSION, required=True)
    generator: str = _entry()
    model: str = _entry(_text, required=True)
    task: str = _entry(lambda v: v in TASKS, required=True)
    num_classes: int | None = _entry(lambda v: type(v) is int and v > 0)   # segmentation only
    weights: str = _entry(lambda v: isinstance(v, str) and v in WEIGHTS)
    checkpoint_path: str | None = _entry(_text)
    checkpoint_sha256: str | None = _entry(_sha)
    target: str = _entry(_text, required=True)
    backend: str = _entry()
    precision: str = _entry(lambda v: v in PRECISIONS, required=True)
    routing: str = _entry(lambda v: isinstance(v, str) and v in ROUTER_PRECISION)   # picks the parity thresholds
    router_precision: str = _entry(lambda v: isinstance(v, str) and v in ROUTER_PRECISION.values())
    quantization: dict | None = _entry(lambda v: isinstance(v, dict))   # INT8: how, from what, the layers kept float
    input_name: str = _entry()
    input_shape: list[int] = _entry(_shape, required=True)              # (N, 3, H, W), static
    opset: int | None = _entry()
    routing_blocks: int = _entry(lambda v: type(v) is int and v >= 0)   # BRA blocks: routing_0 .. outputs
    # The graph's own input/output convention where it is not normalised input -> logits (a DeepStream graph):
    # contract.graph_io_problem says what it holds; sessions and parity convert by it.
    graph_io: dict | None = _entry(lambda v: graph_io_problem(v) is None, omit_none=True)
    options: dict = _entry()                                            # the target's options, defaults merged
    versions: dict = _entry()                                           # every library the export used
    reference_device: str | None = _entry(_text)
    checks: dict = _entry(_checks)                                      # structural checks: name -> {ok, summary}
    artifacts: list[str] = _entry()                                     # the files the backend wrote
    parity_data: str | None = _entry(_text, omit_none=True)             # what the parity inputs were
    parity: dict = _entry()                                             # verdict, per backend
    files: dict = _entry(lambda v: isinstance(v, dict) and len(v) > 0, required=True)   # path -> sha256, bytes

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata["omit_none"] and getattr(self, f.name) is None)}


def write_manifest(directory: Path, manifest: Manifest) -> dict:
    """Write ``manifest.json`` into ``directory`` after holding it to the checks every reader applies (an export that
    would write a manifest its own tools refuse is a bug, caught here). Returns what was written."""
    data = manifest.to_dict()
    problem = manifest_problem(data)
    if problem:
        raise RuntimeError(f"the manifest being written is malformed: {problem}")
    write_json(Path(directory) / MANIFEST, data)
    return data


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
    """What is wrong with a manifest's fields, or None. Only what the tools rely on is checked: the checks of
    :class:`Manifest` (required fields first), the fields that must agree with each other, and the ``files`` table."""
    if not isinstance(m, dict):
        return "not a JSON object"
    fields = dataclasses.fields(Manifest)
    for f in [f for f in fields if f.metadata["required"]] + [f for f in fields if not f.metadata["required"]]:
        check = f.metadata["check"]
        if f.name not in m:
            if f.metadata["required"]:
                return f"no '{f.name}'" + (" table: its files cannot be verified" if f.name == "files" else "")
            continue
        if check is not None and (f.metadata["required"] or m[f.name] is not None) and not check(m[f.name]):
            return f"'{f.name}' is {json.dumps(m[f.name])[:60]}"
    return _agreement_problem(m) or _files_problem(m["files"])


def _agreement_problem(m: dict) -> str | None:
    """``routing`` picks the parity thresholds, so it must agree with ``router_precision`` and with what the
    quantization record says; checkpoint weights name their file."""
    routing = m.get("routing")
    if routing is not None and m.get("router_precision") not in (None, ROUTER_PRECISION[routing]):
        return f"'routing' {routing} with 'router_precision' {m['router_precision']}"
    quant = m.get("quantization") or {}
    for key, want in (("routing", routing), ("router_precision", ROUTER_PRECISION.get(routing))):
        if quant.get(key) is not None and quant[key] != want:
            return f"'quantization.{key}' is {json.dumps(quant[key])[:40]} for 'routing' {json.dumps(routing)}"
    if m.get("weights") == "checkpoint" and not (_text(m.get("checkpoint_path")) and _sha(m.get("checkpoint_sha256"))):
        return "'weights' is checkpoint without its path and sha256"
    return None


def _files_problem(files: dict) -> str | None:
    for rel, info in files.items():
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])
                and type(info.get("bytes")) is int and info["bytes"] >= 0):
            return f"the entry for '{rel}' in 'files' is not a sha256 and a size"
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
