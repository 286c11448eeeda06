"""Regenerate every figure the README and docs give for the default model (biformer_seg_demo), from one command.

    python benchmarks/default_model.py                      # every section (hours on 2 cores; the sweep trains)
    python benchmarks/default_model.py --only int8 readme   # some sections
    python benchmarks/default_model.py --check              # regenerate nothing: say which blocks are stale

Each section runs one measurement (the benchmark scripts beside this one, the demo app, ``biformer-qat``) on the
shipped weights and rewrites its generated block in place: in docs/default_model.md, and one sentence in the README,
between ``<!-- default-model:NAME -->`` and ``<!-- /default-model:NAME -->``. Each block ends with the command, the
date, the weights' sha256 and the CPU, so a block measured on other weights is visibly stale (``--check``), and the
tables change with the weights instead of going stale. The targets the default model is made to meet (INT8 QAR
strict routing >= 0.97 on the held-out scenes and the photographs, and so on: routing_margin_sweep.TARGETS) are
checked where they are measured and printed as PASS/FAIL lines under the table.

The photographs are scikit-image's sample images (benchmarks/sample_photos.py) unless ``--photos DIR``.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from routing_margin_sweep import BASE_MIOU, INT8_MIOU_DROP, TARGETS  # noqa: E402
from sample_photos import write_sample_photos  # noqa: E402

PAGE = ROOT / "docs" / "default_model.md"
README = ROOT / "README.md"
WEIGHTS = ROOT / "biformer_edge" / "weights" / "biformer_seg_demo.pt"
QAT = ROOT / "biformer_edge" / "weights" / "biformer_seg_demo_qat.pt"
SHEET = ROOT / "docs" / "demo_contact_sheet.png"


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def cpu_line() -> str:
    from biformer_edge.cpu import describe, detect
    return describe(detect())


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kw)


def script(name: str, *args) -> list[str]:
    return [sys.executable, str(HERE / name), *args]


def cli(entry: str, *args) -> list[str]:
    """A console command (biformer-export is ``export_main``) run by this interpreter, wherever its scripts are."""
    return [sys.executable, "-c", f"import sys; from biformer_edge.cli import {entry}; sys.exit({entry}())", *args]


def int8_json(tmp: Path, *args) -> dict:
    report = tmp / f"int8-{abs(hash(args))}.json"
    run(script("int8_routing.py", *args, "--output", tmp / "int8.md", "--json", report), stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] +
                     ["| " + " | ".join(r) + " |" for r in rows])


INT8_COLUMNS = ["variant", "data", "cosine", "pixel/top1", "decisive", "regret", "routing strict",
                "routing per block", "FP32 decisive share", "mIoU vs ground truth"]


def int8_table(rows: list[dict], columns=INT8_COLUMNS) -> str:
    return table(columns, [[r[c] for c in columns] for r in rows])


def target_lines(rows: list[dict], variant: str) -> list[str]:
    """PASS/FAIL of the INT8 targets on ``variant``'s rows (scenes, photos)."""
    found = {r["data"]: r for r in rows if r["variant"] == variant}
    lines = []
    columns = {"strict": "routing strict", "decisive": "decisive", "regret": "regret", "pixel": "pixel/top1"}
    for key, bounds in TARGETS.items():
        for data, bound in zip(("synthetic", "photos"), bounds):
            if bound is None or data not in found:
                continue
            value = float(found[data][columns[key]])
            ok = value <= bound if key == "regret" else value >= bound
            lines.append(f"{'PASS' if ok else 'FAIL'}: {variant} {key} on {data} {value:.4f} "
                         f"({'<=' if key == 'regret' else '>='} {bound:g})")
    return lines


# --- sections: each returns the block's Markdown (without the provenance line) -------------------------------------

def section_accuracy(tmp: Path, photos: Path) -> str:
    """Held-out mIoU of the FP32 model on 200 scenes, per class (train_demo's own evaluation)."""
    from biformer_edge.models import create_model
    from biformer_edge.train_demo import evaluate

    result = evaluate(create_model("biformer_seg_demo", pretrained=True), 200, 128)
    recipe = json.loads(WEIGHTS.with_suffix(".json").read_text())
    classes = list(result["per_class_iou"])
    text = table(["held-out mIoU (200 scenes)", *classes, "pixel accuracy"],
                 [[f"**{result['miou']:.4f}**", *(f"{v:.4f}" for v in result["per_class_iou"].values()),
                   f"{result['pixel_accuracy']:.4f}"]])
    ok = result["miou"] >= BASE_MIOU
    recipe_text = json.dumps(recipe.get("recipe", {}), sort_keys=True)
    return (f"{text}\n\n{'PASS' if ok else 'FAIL'}: FP32 mIoU {result['miou']:.4f} (>= {BASE_MIOU:.4f}, the pre-margin "
            f"model's)\n\nRecipe recorded with the weights (biformer_seg_demo.json): `{recipe_text}`")


def section_int8(tmp: Path, photos: Path) -> str:
    """FP16, INT8 PTQ-QAR, QAT-QAR (shipped state) and naive through onnxruntime: scenes and photographs."""
    report = int8_json(tmp, "--scenes", "64", "--photos", photos)
    rows = report["rows"]
    miou = {r["variant"]: float(r["mIoU vs ground truth"]) for r in rows if r["data"] == "synthetic"}
    lines = target_lines(rows, "int8-ptq-qar") + target_lines(rows, "int8-qat-qar")
    for variant in ("int8-ptq-qar", "int8-qat-qar"):
        drop = miou["fp32 (reference)"] - miou[variant]
        lines.append(f"{'PASS' if drop <= INT8_MIOU_DROP else 'FAIL'}: {variant} mIoU {miou[variant]:.4f} within "
                     f"{100 * INT8_MIOU_DROP:.1f} point of FP32 {miou['fp32 (reference)']:.4f} (64 scenes)")
    return f"CPU: {report['cpu']}\n\n{int8_table(rows)}\n\n```\n" + "\n".join(lines) + "\n```"


def section_int8_jetson(tmp: Path, photos: Path) -> str:
    """The jetson target's mixed-precision graph (float layers FP16) against the onnx target's, onnxruntime."""
    # --cpu vnni: the onnx graph with full 8-bit weights, as the jetson graph has, so only the float types differ
    report = int8_json(tmp, "--scenes", "64", "--graph", "onnx", "jetson", "--cpu", "vnni")
    return int8_table(report["rows"], ["runtime", *INT8_COLUMNS])


def section_cpu_classes(tmp: Path, photos: Path) -> str:
    """INT8 per --cpu class: OpenVINO with portable and vnni weights, onnxruntime with vnni weights (its portable
    rows are the int8 block's)."""
    parts = []
    for runtime, classes in (("openvino", ("portable", "vnni")), ("onnxruntime", ("vnni",))):
        report = int8_json(tmp, "--scenes", "64", "--photos", photos, "--runtime", runtime, "--cpu", *classes)
        (tmp / f"cpu_classes_{runtime}.json").write_text(json.dumps(report))
        parts.append(int8_table(report["rows"], ["runtime", *INT8_COLUMNS]))
    return f"CPU: {report['cpu']}\n\n" + "\n\n".join(parts)


def section_readme(tmp: Path, photos: Path) -> str:
    """The README's one sentence: the default --int8 export on OpenVINO (shipped QAT state, --cpu portable)."""
    cached = tmp / "cpu_classes_openvino.json"
    report = json.loads(cached.read_text()) if cached.is_file() else int8_json(
        tmp, "--scenes", "64", "--runtime", "openvino", "--cpu", "portable")
    rows = {(r["variant"], r["data"]): r for r in report["rows"]}

    def pick(prefix: str) -> dict:
        return next(r for (v, d), r in rows.items() if v.startswith(prefix) and "vnni" not in v and d == "synthetic")

    qat, naive = pick("int8-qat-qar"), pick("int8-naive")
    return (f"What to expect, for the default model (shipped QAT state, `--cpu portable`, OpenVINO on this CPU: "
            f"{report['cpu']}; 64 held-out scenes): pixel agreement {qat['pixel/top1']} and strict routing agreement "
            f"{qat['routing strict']} with FP32, against {naive['routing strict']} for `--routing naive`.")


def section_fp16(tmp: Path, photos: Path) -> str:
    """What the FP32 router island buys in FP16/BF16 runs (benchmarks/bench_fp16_router.py)."""
    out = tmp / "fp16_router.md"
    run(script("bench_fp16_router.py", "--output", out), stdout=subprocess.DEVNULL)
    return "\n".join(line for line in out.read_text().splitlines() if not line.startswith("# "))


def section_openvino_precision(tmp: Path, photos: Path) -> str:
    """Routing under each OpenVINO CPU compute precision (benchmarks/openvino_precision.py)."""
    run(script("openvino_precision.py", "biformer_seg_demo:128", "biformer_seg_demo:256", "--out", tmp),
        stdout=subprocess.DEVNULL)
    text = (tmp / "openvino_precision.md").read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("# "))


DEMO_ARTIFACTS = (("openvino", "fp32", "OpenVINO FP32"), ("openvino", "fp16", "OpenVINO FP16"),
                  ("onnx", "fp32", "onnxruntime FP32"), ("onnx", "fp16", "onnxruntime FP16"))
SHEET_ARTIFACT = "OpenVINO FP16"


def section_demo(tmp: Path, photos: Path) -> str:
    """The video demo with --compare on four exports; the OpenVINO FP16 run redraws the README's contact sheet."""
    rows, stage_names = [], []
    for target, precision, label in DEMO_ARTIFACTS:
        artifact = tmp / f"demo-{target}-{precision}"
        run(cli("export_main", "--target", target, f"--{precision}", "--output", artifact), stdout=subprocess.DEVNULL)
        video = tmp / f"demo-{target}-{precision}.mp4"
        with tempfile.TemporaryDirectory(dir=SHEET.parent, prefix=".sheet-") as staging:
            sheet = Path(staging) / SHEET.name
            run([sys.executable, str(ROOT / "apps" / "video_segmentation.py"), "--artifact", artifact, "--input",
                 "synthetic", "--output", video, "--compare", "--sheet", sheet], stdout=subprocess.DEVNULL)
            if label == SHEET_ARTIFACT:
                sheet.replace(SHEET)
        s = json.loads(video.with_suffix(".json").read_text())
        c, stage_names = s["compare"], list(s["stage_ms"])
        computes = f" (computes {s['inference_precision']})" if s.get("inference_precision") else ""
        rows.append([label + computes, *(f"{v:.1f}" for v in s["stage_ms"].values()), f"{s['fps']:.1f}",
                     f"{c['pixel_agreement_mean']:.5f} / {c['pixel_agreement_min']:.5f}",
                     f"{s['flicker_rate']:.4f} / {c['reference_flicker_rate']:.4f}"])
    return (table(["artifact", *(f"{n} ms" for n in stage_names), "FPS end to end", "pixel agreement mean / min",
                   "flicker deployed / reference"], rows) +
            f"\n\n{s['frames']} frames at {'x'.join(map(str, s['frame_size']))}, pixel agreement at the output "
            f"resolution {'x'.join(map(str, c['compared_at']))}, upsample {s['upsample']}. Contact sheet (the "
            f"{SHEET_ARTIFACT} run): [demo_contact_sheet.png](demo_contact_sheet.png).")


def section_qat(tmp: Path, photos: Path) -> str:
    """Rebuild the shipped QAT state with the command that made it; biformer-qat's own held-out report."""
    out = tmp / "qat.pt"
    done = run(cli("qat_main", "--output", out), capture_output=True, text=True)
    report = [line for line in (done.stdout + done.stderr).splitlines()
              if re.search(r"held-out|PTQ start|after QAT|decisive", line)]
    same = sha12(out) == sha12(QAT)
    return ("`biformer-qat --output biformer_edge/weights/biformer_seg_demo_qat.pt --force`, its report:\n\n```\n" +
            "\n".join(report[-6:]) + "\n```\n\n" +
            f"Rebuilt state {'is' if same else 'is not'} bit-identical to the shipped one ({sha12(out)} vs "
            f"{sha12(QAT)}; bit-identity holds on one machine, not across CPUs).")


def section_sweep(tmp: Path, photos: Path) -> str:
    """The routing-margin sweep that chose the shipped fine-tune (benchmarks/routing_margin_sweep.py)."""
    out = tmp / "sweep.md"
    run(script("routing_margin_sweep.py", "--photos", photos, "--output", out), stdout=subprocess.DEVNULL)
    return out.read_text().strip()


SECTIONS = {"accuracy": (section_accuracy, PAGE), "int8": (section_int8, PAGE),
            "int8-jetson": (section_int8_jetson, PAGE), "cpu-classes": (section_cpu_classes, PAGE),
            "readme": (section_readme, README), "fp16": (section_fp16, PAGE),
            "openvino-precision": (section_openvino_precision, PAGE), "demo": (section_demo, PAGE),
            "qat": (section_qat, PAGE), "sweep": (section_sweep, PAGE)}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- default-model:{re.escape(name)} -->\n)(.*?)(<!-- /default-model:{re.escape(name)} -->)",
                      re.S)


def provenance(name: str, weights: str) -> str:
    return (f"<sub>`python benchmarks/default_model.py --only {name}` · {datetime.date.today().isoformat()} · "
            f"weights {weights} · {cpu_line()}</sub>")


def replace_block(path: Path, name: str, body: str) -> None:
    # sections may run in parallel processes (--only A, --only B): one read-modify-write of a file at a time
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"biformer-default-model-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _replace_block(path, name, body)


def _replace_block(path: Path, name: str, body: str) -> None:
    text = path.read_text()
    pattern = block_pattern(name)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no block '{name}': add <!-- default-model:{name} --> ... "
                         f"<!-- /default-model:{name} --> where it belongs")
    new = pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(3), text, count=1)
    staged = path.with_name(f".{path.name}.partial")
    staged.write_text(new)
    staged.replace(path)


def stale_blocks(weights: str) -> list[str]:
    stale = []
    for name, (_, path) in SECTIONS.items():
        m = block_pattern(name).search(path.read_text())
        if m is None or f"weights {weights}" not in m.group(2):
            stale.append(f"{name} ({path.relative_to(ROOT)})")
    return stale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), help="these sections (default: all)")
    p.add_argument("--skip", nargs="+", choices=list(SECTIONS), default=[], help="all sections but these")
    p.add_argument("--photos", help="folder of photographs (default: scikit-image's sample images)")
    p.add_argument("--check", action="store_true", help="measure nothing: list the blocks not measured on the "
                                                        "shipped weights; exit 1 if any")
    a = p.parse_args(argv)
    weights = sha12(WEIGHTS)
    if a.check:
        stale = stale_blocks(weights)
        print("\n".join(f"stale: {s}" for s in stale) or f"every block was measured on weights {weights}")
        return 1 if stale else 0
    names = [n for n in (a.only or SECTIONS) if n not in a.skip]
    with tempfile.TemporaryDirectory(prefix="default-model-") as tmp:
        photos = Path(a.photos) if a.photos else write_sample_photos(Path(tmp) / "photos")
        for name in names:
            function, path = SECTIONS[name]
            print(f"== {name}: {function.__doc__.splitlines()[0]}", flush=True)
            body = function(Path(tmp), photos)
            note = provenance(name, weights)
            replace_block(path, name, body + "\n\n" + note if path == PAGE else body + " " + note)
            print(body, flush=True)
    print(f"rewrote {len(names)} block(s); review with: git diff -- docs README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
