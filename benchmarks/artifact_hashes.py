"""The sha256 of every file a fixed set of exports writes, so that two checkouts can be compared: a refactoring that
must not change behaviour must not change these (the model files at least), and two runs of one checkout must agree.

    python benchmarks/artifact_hashes.py --output hashes-new.json            # in the checkout under test
    python benchmarks/artifact_hashes.py --compare hashes-old.json hashes-new.json

Each export runs with ``--no-parity`` at 64x64 (the shipped-QAT one at the model's own 128x128) in a private calibration
cache, so the result depends on the code and the shipped weights only. Takes about 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

SMALL = ["--input-size", "64", "64"]
EXPORTS = {   # name -> biformer-export arguments
    "onnx-fp32": ["--target", "onnx", "--fp32", *SMALL],
    "openvino-fp16": ["--target", "openvino", "--fp16", *SMALL],
    "jetson-fp16": ["--target", "jetson", "--fp16", *SMALL],
    "onnx-int8-qar": ["--target", "onnx", "--int8", *SMALL, "--calib-samples", "8"],
    "openvino-int8-qar": ["--target", "openvino", "--int8", *SMALL, "--calib-samples", "8"],
    "jetson-int8-naive": ["--target", "jetson", "--int8", "--routing", "naive", *SMALL, "--calib-samples", "8"],
    "openvino-int8-shipped-qat": ["--target", "openvino", "--int8"],
    "coreml-int8": ["--target", "coreml", "--int8", *SMALL],
}


def export_all(names: list[str]) -> dict[str, dict]:
    from biformer_edge.cli import export_main

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="biformer-hashes-") as tmp:
        os.environ["BIFORMER_EDGE_CACHE"] = str(Path(tmp) / "cache")
        for name in names:
            target = Path(tmp) / name
            try:
                with contextlib.redirect_stdout(sys.stderr):   # stdout is for the hashes
                    export_main([*EXPORTS[name], "--no-parity", "--output", str(target)])
            except SystemExit as exc:
                if exc.code:
                    out[name] = {"error": f"exit status {exc.code}"}
                    continue
            manifest = json.loads((target / "manifest.json").read_text())
            out[name] = {rel: info["sha256"] for rel, info in sorted(manifest["files"].items())}
            print(f"{name}: {len(out[name])} files", file=sys.stderr)
    return out


def compare(old: dict, new: dict) -> int:
    """Print one line per file (same / DIFFERENT / only in one); returns how many differ."""
    differ = 0
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, {}), new.get(name, {})
        for rel in sorted(set(a) | set(b)):
            verdict = "same" if a.get(rel) == b.get(rel) else ("DIFFERENT" if rel in a and rel in b else
                                                              "only in " + ("old" if rel in a else "new"))
            differ += verdict != "same"
            print(f"{name:28s} {rel:24s} {verdict}")
    return differ


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", help="write the hashes (JSON) here (default: stdout)")
    p.add_argument("--only", nargs="+", choices=list(EXPORTS), help="these exports only")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two hash files instead of exporting")
    a = p.parse_args(argv)
    if a.compare:
        old, new = (json.loads(Path(f).read_text()) for f in a.compare)
        return 1 if compare(old, new) else 0
    hashes = json.dumps(export_all(a.only or list(EXPORTS)), indent=2, sort_keys=True)
    if a.output:
        Path(a.output).write_text(hashes + "\n")
    else:
        print(hashes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
