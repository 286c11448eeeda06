"""The demo's run: source -> preprocess -> runtime -> labels -> overlay + HUD -> MP4, with per-stage timings, an
optional FP32 comparison (``parity.video.Comparison``), a contact sheet and a JSON summary.

Every runtime gets the same pre/post-processing: ``preprocess()`` to the artifact's input size, ``Session.run``,
``to_labels`` (argmax at the model's output resolution: what pixel agreement and flicker are measured on, parity's
definition), and for display the label map at the frame size (``draw.DisplayLabels``, ``--upsample``): by default the
class scores resized bilinearly to the frame, then argmax (smooth edges), or the label map upsampled
nearest-neighbour (blocks of frame/output pixels); an output already at the frame size (a DeepStream graph's
probabilities at the input size, on frames of that size) is drawn as it is.

Outputs are written through ``artifact.AtomicOutputs``: temporaries beside the final paths, renamed into place only
when the whole run succeeded; an error, Ctrl-C or SIGTERM leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..fileio import AtomicOutputs
from ..metrics import agreement, flicker_rate, to_labels
from ..parity.video import Comparison
from ..preprocess import preprocess
from .draw import (
    SHEET_ROWS,
    DisplayLabels,
    SheetPicker,
    class_names_and_palette,
    contact_sheet,
    hud,
    legend,
    overlay,
    thumb,
    thumb_size,
)
from .runtime import Deployed, artifact_inputs, load_artifact, open_deployed, torch_session
from .sources import FrameSource, frame_limit, input_file, open_source

STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")


def output_paths(args) -> tuple[Path, Path, Path]:
    """(video, sheet, json): --output, --sheet (default: the video's name with .png) and the video's name with .json."""
    out = Path(args.output)
    sheet_path = Path(args.sheet) if args.sheet else out.with_suffix(".png")
    json_path = out.with_suffix(".json")
    if len({out.resolve(), sheet_path.resolve(), json_path.resolve()}) < 3:
        raise UserError(f"--output {out} and --sheet {sheet_path} collide with each other or with {json_path}: "
                        f"use an .mp4 output and a .png sheet")
    return out, sheet_path, json_path


def run(args, log=print) -> dict:
    """The whole demo; returns the summary written to OUT.json."""
    out, sheet_path, json_path = output_paths(args)
    artifact, manifest = load_artifact(args.artifact)
    protected = artifact_inputs(artifact, manifest)
    protected += [p for p in (input_file(args.input), args.checkpoint and Path(args.checkpoint)) if p]
    for final in (out, sheet_path, json_path):   # the artifact holds only what biformer-export wrote
        if os.path.realpath(Path(final).parent) == os.path.realpath(artifact):
            raise UserError(f"{final} is inside the artifact: write the demo's outputs elsewhere")
    outputs = AtomicOutputs([out, sheet_path, json_path], protected=protected)  # refuses before anything is written
    batch, _, in_h, in_w = manifest["input_shape"]
    source = open_source(args)
    try:
        deployed = open_deployed(artifact, manifest, args.backend, args.precision_hint, args.checkpoint)
        reference = None
        if args.compare:
            reference = deployed.session if deployed.backend == "torch" else \
                torch_session(manifest, args.checkpoint, "--compare")
        with outputs:
            tmp_video, tmp_sheet, tmp_json = outputs.temp(out), outputs.temp(sheet_path), outputs.temp(json_path)
            summary = process(args, source, artifact, manifest, deployed, reference, tmp_video, out, log,
                              batch, (in_h, in_w))
            source.close()

            picked = summary.pop("_sheet")
            names, palette = summary.pop("_classes")
            ref_label = sheet_reference(picked, reference, deployed, manifest, args.checkpoint, summary["notes"], log,
                                        args.upsample)
            rows = [{"index": i, "thumb": item["thumb"], "deployed": item["deployed_view"],
                     "reference": item.get("reference_view"), "agreement": item["agreement"],
                     "agreement_at": summary["model_output"]} for i, item in picked]
            sheet = contact_sheet(rows, ["input", f"FP32 reference\n{ref_label}", f"deployed\n{deployed.label}"],
                                  names, palette)
            ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
            if not ok:
                raise UserError(f"cannot encode the contact sheet {sheet_path}")
            tmp_sheet.write_bytes(png.tobytes())

            summary["outputs"] = {"video": str(out), "sheet": str(sheet_path), "json": str(json_path)}
            tmp_json.write_text(json.dumps(summary, indent=2) + "\n")
            outputs.commit()
    finally:
        source.close()
    log(format_table(summary))
    log(f"wrote {out}, {sheet_path}, {json_path}")
    return summary


def infer(session, rgb: np.ndarray, input_hw: tuple[int, int], batch: int, timer: dict):
    """preprocess() to the artifact's input size, then Session.run. Returns (the 1x3xHxW input, logits of the first
    image); fills timer["preprocess"] and timer["inference"]. A batch > 1 artifact gets the frame repeated."""
    t0 = time.perf_counter()
    x = preprocess(rgb, input_hw)[None]
    batch_x = np.repeat(x, batch, axis=0) if batch > 1 else x
    t1 = time.perf_counter()
    logits = session.run(batch_x).logits
    t2 = time.perf_counter()
    timer["preprocess"], timer["inference"] = t1 - t0, t2 - t1
    return x, logits[:1]


def open_writer(path: Path, fps: float, size_hw: tuple[int, int], final: Path):
    h, w = size_hw
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (int(w), int(h)))
    if not writer.isOpened():
        raise UserError(f"cannot write {final}: OpenCV's VideoWriter could not open an mp4v stream for "
                        f"'{final.suffix or 'no suffix'}' files: use an .mp4 output path")
    return writer


def process(args, source: FrameSource, artifact: Path, manifest: dict, deployed: Deployed, reference, tmp_video: Path,
            out: Path, log, batch: int, input_hw: tuple[int, int]) -> dict:
    """The frame loop: decode -> preprocess -> inference -> postprocess (labels, labels at the frame size, overlay)
    -> encode, with per-stage timings; the FP32 reference (``--compare``) runs after each frame, timed apart."""
    from tqdm import tqdm

    max_frames, max_seconds = frame_limit(args, source)
    fps_out = args.fps or source.fps
    frame_hw = tuple(int(v) for v in source.size)

    # warm-up (not timed): lazy runtime initialisation, and the output resolution / class count
    x0 = np.zeros((batch, 3, *input_hw), np.float32)
    probe = deployed.session.run(x0).logits
    num_classes = int(manifest.get("num_classes") or probe.shape[1])
    out_hw = tuple(int(v) for v in probe.shape[2:4])
    if reference is not None and reference is not deployed.session:
        reference.run(x0)
    names, palette = class_names_and_palette(num_classes)
    skip_bg = names[0] == "background"
    label_dtype = np.uint8 if num_classes <= 256 else np.int32
    display = DisplayLabels(args.upsample, out_hw, frame_hw, label_dtype)              # the video's frames
    sheet_view = DisplayLabels(args.upsample, out_hw, thumb_size(frame_hw), label_dtype)  # the contact sheet's
    # first use of OpenCV's drawing code (fonts, kernels) is slow: not part of the per-frame numbers either
    probe_labels = to_labels(probe)[0].astype(label_dtype)
    warm = overlay(np.zeros((*frame_hw, 3), np.uint8), display(probe[0], probe_labels), palette=palette,
                   skip_background=skip_bg)
    hud(legend(warm, probe_labels, names, palette), "warm-up")

    notes = list(deployed.notes)
    for note in notes:
        log(f"note: {note}")
    if batch > 1:
        notes.append(f"the artifact takes batches of {batch}: each frame is repeated to fill the batch")
        log(f"note: {notes[-1]}")
    log(f"artifact {artifact} ({manifest['model']}, {manifest['target']} {manifest['precision']}, "
        f"{manifest.get('weights')} weights) on {deployed.label}")
    limit = (f"{max_frames} frames" if max_frames else "") + \
        (f"{' / ' if max_frames else ''}{max_seconds:g} s" if max_seconds else "")
    log(f"input {source.name}: {frame_hw[0]}x{frame_hw[1]} -> model {input_hw[0]}x{input_hw[1]} -> labels "
        f"{out_hw[0]}x{out_hw[1]} -> display: {display.describe()}{'; ' + limit if limit else ''}")

    writer = open_writer(tmp_video, fps_out, frame_hw, out)
    times = {s: [] for s in STAGES}
    upsample_times = []     # part of postprocess: the label map at the frame size
    dep_maps = []
    comparison = Comparison(reference, label_dtype) if reference is not None else None
    picker = SheetPicker()
    recent = deque(maxlen=30)
    resized = 0
    total = max_frames if max_frames else source.total
    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", desc="segmenting", leave=False, mininterval=0.5,
                  file=sys.stderr, disable=None) as bar:
            index = 0
            while max_frames is None or index < max_frames:
                if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                    break
                timer = {}
                t0 = time.perf_counter()
                rgb = source.read()
                if rgb is None:
                    break
                if rgb.shape[:2] != frame_hw:
                    if resized == 0:
                        msg = (f"frame {index} is {rgb.shape[0]}x{rgb.shape[1]}, not the stream's "
                               f"{frame_hw[0]}x{frame_hw[1]}: resizing such frames")
                        notes.append(msg)
                        tqdm.write(f"note: {msg}", file=sys.stdout)
                    resized += 1
                    rgb = cv2.resize(rgb, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR)
                timer["decode"] = time.perf_counter() - t0

                x, logits = infer(deployed.session, rgb, input_hw, batch, timer)

                t3 = time.perf_counter()
                labels = to_labels(logits)[0].astype(label_dtype)   # argmax at the model's output resolution
                t_up = time.perf_counter()
                at_frame_size = display(logits[0], labels)
                upsample_times.append(time.perf_counter() - t_up)
                shown = overlay(rgb, at_frame_size, palette=palette, skip_background=skip_bg)
                if args.legend:
                    shown = legend(shown, labels, names, palette)
                fps_now = len(recent) / sum(recent) if recent and sum(recent) > 0 else 0.0
                hud(shown, f"{deployed.label} | {fps_now:.1f} FPS | {1e3 * timer['inference']:.1f} ms")
                t4 = time.perf_counter()
                writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
                t5 = time.perf_counter()
                timer["postprocess"], timer["encode"] = t4 - t3, t5 - t4
                for s in STAGES:
                    times[s].append(timer[s])
                recent.append(sum(timer[s] for s in STAGES))
                dep_maps.append(labels)

                item = None
                if picker.wants(index):
                    item = {"thumb": thumb(rgb), "x": x, "deployed": labels, "reference": None, "agreement": None,
                            "deployed_view": sheet_view(logits[0], labels).copy()}
                    picker.add(index, item)
                if comparison is not None:
                    comparison.add(x, labels, item)
                index += 1
                bar.update(1)
    finally:
        writer.release()
    wall = time.perf_counter() - started

    n = len(dep_maps)
    if n == 0:
        raise UserError(f"{source.name} gave no frames to process")
    if not tmp_video.is_file() or tmp_video.stat().st_size == 0:
        raise UserError(f"cannot write {out}: the video writer produced no data (disk full?)")

    stage_ms = {s: 1e3 * float(np.mean(times[s])) for s in STAGES}
    dep_flicker = flicker_rate(np.stack(dep_maps))
    e2e_ms = sum(stage_ms.values())
    summary = {
        "artifact": str(artifact), "model": manifest["model"], "target": manifest["target"],
        "precision": manifest["precision"], "weights": manifest.get("weights"),
        "backend": deployed.backend, "backend_label": deployed.label,
        "device": getattr(deployed.session, "device", "cpu"),
        "precision_hint": getattr(deployed.session, "precision_hint", None),
        "inference_precision": getattr(deployed.session, "inference_precision", None),
        "source": source.name, "frames": n, "frame_size": list(frame_hw), "model_input": list(input_hw),
        "model_output": list(out_hw), "output_fps": fps_out, "resized_frames": resized,
        "upsample": args.upsample, "display_labels": display.describe(),
        "stage_ms": {s: round(v, 3) for s, v in stage_ms.items()},
        "upsample_ms": round(1e3 * float(np.mean(upsample_times)), 3),   # included in stage_ms["postprocess"]
        "end_to_end_ms": round(e2e_ms, 3), "fps": round(1e3 / e2e_ms, 2) if e2e_ms > 0 else None,
        "wall_s": round(wall, 3), "flicker_rate": round(dep_flicker, 6),
        "compare": None, "notes": notes,
    }
    if comparison is not None:
        summary["compare"] = comparison.summary(dep_flicker)
        # parity's definition: label maps at the artifact's output resolution, before any upsampling for display
        summary["compare"]["compared_at"] = list(out_hw)
    summary["_sheet"] = picker.pick(SHEET_ROWS)
    summary["_classes"] = (names, palette)
    return summary


def sheet_reference(picked: list, reference, deployed: Deployed, manifest: dict, checkpoint: str | None,
                    notes: list[str], log, upsample: str) -> str:
    """FP32 reference for the sheet's frames, run now on their stored inputs (one batch): its label maps drawn as the
    deployed ones are (``upsample``), and, without --compare, its pixel agreement at the output resolution (with
    --compare the comparison measured it already). Without an FP32 model (random-weight exports, missing checkpoint,
    no PyTorch) the column says so. Returns its label."""
    if not picked:
        return ""
    if reference is None:
        try:
            reference = deployed.session if deployed.backend == "torch" else \
                torch_session(manifest, checkpoint, "the sheet's reference column")
        except UserError as exc:
            notes.append(f"sheet: no FP32 reference column ({exc})")
            log(f"note: {notes[-1]}")
            return "unavailable"
    scores = reference.run(np.concatenate([item["x"] for _, item in picked])).logits
    refs = to_labels(scores)
    for (_, item), ref_scores, ref in zip(picked, scores, refs):
        ref = ref.astype(item["deployed"].dtype)
        view = DisplayLabels(upsample, ref.shape, item["deployed_view"].shape, ref.dtype)
        item["reference_view"] = view(ref_scores, ref).copy()
        if item["reference"] is None:
            item["reference"] = ref
            item["agreement"] = agreement(ref, item["deployed"])
    return f"torch fp32 ({getattr(reference, 'device', 'cpu')})"


def format_table(summary: dict) -> str:
    lines = [f"{summary['frames']} frames {summary['frame_size'][0]}x{summary['frame_size'][1]}, "
             f"{summary['backend_label']}", f"{'stage':<24}{'ms/frame':>10}"]
    for s in STAGES:
        lines.append(f"{s:<24}{summary['stage_ms'][s]:>10.2f}")
    lines.append(f"{'end to end':<24}{summary['end_to_end_ms']:>10.2f}   {summary['fps']:.1f} FPS")
    cmp = summary.get("compare")
    if cmp:
        lines.append(f"{'reference (not in FPS)':<24}{cmp['reference_ms']:>10.2f}   {cmp['reference']}, batches of "
                     f"{cmp['reference_batch']}")
    lines.append(f"flicker rate {summary['flicker_rate']:.4f}")
    if cmp:
        rel = cmp["flicker_relative_diff"]
        at = cmp.get("compared_at") or summary["model_output"]
        lines.append(f"pixel agreement vs FP32 at the output resolution {at[0]}x{at[1]} (label maps before "
                     f"upsampling): mean {cmp['pixel_agreement_mean']:.5f}, min "
                     f"{cmp['pixel_agreement_min']:.5f}; reference flicker {cmp['reference_flicker_rate']:.4f} "
                     f"(relative difference {'n/a' if rel is None else f'{rel:+.2%}'})")
    return "\n".join(lines)
