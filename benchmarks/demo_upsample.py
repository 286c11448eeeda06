#!/usr/bin/env python3
"""What the video demo's smooth masks cost: FPS with ``--upsample bilinear`` (class scores resized to the frame, then
argmax; the default) against ``--upsample nearest`` (the label map's pixels repeated), on one artifact.

Both modes run the whole demo (``biformer_edge.video.pipeline.run``: synthetic clip, the artifact's runtime, overlay,
MP4 encode) in this one process, in interleaved rounds whose order alternates (nearest first, then bilinear first,
...), so that a machine whose load drifts weighs on both alike. What is reported per round is the ratio of the two
FPS (and of the postprocess stage, which holds the upsampling); the medians over rounds are the result. FPS is the
demo's own: 1000 / the sum of the per-stage mean milliseconds.

    python benchmarks/demo_upsample.py --artifact artifacts/biformer_seg_demo-openvino-fp16
    python benchmarks/demo_upsample.py --artifact A --rounds 2 --frames 60 --output /tmp/demo_upsample.md  # quick

Writes ``bench_results/demo_upsample.md`` (``--output``) and prints it.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # the checkout's package when it is not installed

from biformer_edge.console import OneLineParser, error_boundary  # noqa: E402
from biformer_edge.errors import UserError  # noqa: E402
from biformer_edge.fileio import write_file  # noqa: E402

MODES = ("nearest", "bilinear")


def parse(argv):
    p = OneLineParser(prog="demo_upsample.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True, help="a segmentation artifact (biformer-export)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of both modes (default 5)")
    p.add_argument("--frames", type=int, default=300, help="frames per run (default 300: the demo's 10 s clip)")
    p.add_argument("--size", nargs=2, type=int, default=(256, 256), metavar=("H", "W"),
                   help="synthetic frame size (default 256 256, the demo's)")
    p.add_argument("--backend", help="runtime (default: the demo's choice)")
    p.add_argument("--output", default=str(ROOT / "bench_results" / "demo_upsample.md"), help="markdown report")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.frames < 2:
        raise UserError("--rounds must be >= 1 and --frames >= 2")
    return a


def run_once(artifact: str, mode: str, frames: int, size, backend, folder: Path) -> dict:
    from biformer_edge.video import parse_args, pipeline

    argv = ["--artifact", artifact, "--input", "synthetic", "--output", str(folder / f"{mode}.mp4"),
            "--frames", str(frames), "--size", str(size[0]), str(size[1]), "--upsample", mode]
    if backend:
        argv += ["--backend", backend]
    return pipeline.run(parse_args(argv), log=lambda *a: None)


def report(args, runs: list[dict[str, dict]]) -> str:
    first = runs[0]["bilinear"]
    ratio = [r["bilinear"]["fps"] / r["nearest"]["fps"] for r in runs]
    post = [r["bilinear"]["stage_ms"]["postprocess"] / r["nearest"]["stage_ms"]["postprocess"] for r in runs]
    lines = [
        "# Video demo: bilinear label maps against nearest",
        "",
        f"`python benchmarks/demo_upsample.py --artifact {args.artifact} --rounds {args.rounds} --frames "
        f"{args.frames} --size {args.size[0]} {args.size[1]}`",
        "",
        f"{first['backend_label']}; {first['frame_size'][0]}x{first['frame_size'][1]} frames, model "
        f"{first['model_input'][0]}x{first['model_input'][1]}, output {first['model_output'][0]}x"
        f"{first['model_output'][1]}; {args.frames} frames a run, {args.rounds} interleaved rounds in one process.",
        "",
        "| round | FPS nearest | FPS bilinear | FPS ratio bilinear / nearest | postprocess ms nearest | postprocess ms "
        "bilinear | upsample ms nearest | upsample ms bilinear |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        n, b = r["nearest"], r["bilinear"]
        lines.append(f"| {i + 1} | {n['fps']:.1f} | {b['fps']:.1f} | {ratio[i]:.3f} | "
                     f"{n['stage_ms']['postprocess']:.2f} | {b['stage_ms']['postprocess']:.2f} | "
                     f"{n['upsample_ms']:.3f} | {b['upsample_ms']:.3f} |")

    def med(mode, key):
        return statistics.median(r[mode][key] if key != "postprocess" else r[mode]["stage_ms"]["postprocess"]
                                 for r in runs)

    lines += [
        f"| median | {med('nearest', 'fps'):.1f} | {med('bilinear', 'fps'):.1f} | "
        f"**{statistics.median(ratio):.3f}** | {med('nearest', 'postprocess'):.2f} | "
        f"{med('bilinear', 'postprocess'):.2f} | {med('nearest', 'upsample_ms'):.3f} | "
        f"{med('bilinear', 'upsample_ms'):.3f} |",
        "",
        f"FPS ratio bilinear / nearest: median {statistics.median(ratio):.3f} (range {min(ratio):.3f}-"
        f"{max(ratio):.3f}); postprocess ratio: median {statistics.median(post):.3f}.",
        "",
    ]
    return "\n".join(lines)


@error_boundary
def main(argv) -> int:
    args = parse(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = MODES if i % 2 == 0 else MODES[::-1]
            runs.append({})
            for mode in order:
                runs[-1][mode] = run_once(args.artifact, mode, args.frames, args.size, args.backend, Path(tmp))
                s = runs[-1][mode]
                print(f"round {i + 1} {mode:<8} {s['fps']:6.1f} FPS, postprocess {s['stage_ms']['postprocess']:.2f} "
                      f"ms (upsample {s['upsample_ms']:.3f} ms)", flush=True)
    text = report(args, runs)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
