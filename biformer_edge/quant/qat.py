"""Routing-consistent QAT (QAR step 3): a short fake-quant fine-tune distilled from the user's own FP32 model.

    biformer-qat --data FOLDER_OR_VIDEO ... --output qat.pt       # then: biformer-export --int8 --checkpoint qat.pt

1. The FP32 model (shipped weights or ``--checkpoint``) is the teacher, frozen.
2. The student starts as PTQ-QAR: ModelOpt fake quantization calibrated on the training images, LayerNorm inputs and
   the keep-float search's layers in float, the router an FP32 island (:mod:`biformer_edge.quant.int8`). Its INT8
   ranges stay fixed; the float weights learn through the quantizers (straight-through gradients).
3. Loss, label-free: the KL divergence of the student's class distribution from the teacher's at every pixel (or
   image), plus ``routing_weight`` x a margin ranking loss on the quantized model's region affinities: for every
   query region, the weakest of the teacher's top-k regions must beat the strongest other region by half the
   teacher's own margin (relative to the teacher's affinity spread). Decisive routes get a large required margin,
   near-ties only the right order. Optionally ``routing_margin`` x the teacher-free margin hinge of
   :mod:`biformer_edge.models.routing_margin` on the student's own quantized affinities: every query's k-th region
   must lead its (k+1)-th by ``margin`` of its spread, so near-ties become decisive and INT8 noise cannot flip them.
4. Data order and flips derive from (seed, step) alone, so a resumed run equals an uninterrupted one, and
   ``torchrun --nproc_per_node N`` splits each global batch across processes (DistributedDataParallel averages the
   gradients: the same update as one process, up to summation order).

Everything is measured against the teacher on held-out images (synthetic scenes of other seeds, or the last images of
the user's data) before and after training, and recorded in the checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import collect_images
from ..data.seeds import SCENE_SETS, scene_set
from ..data.synthetic import render_scene
from ..errors import UserError, short_reason
from ..fileio import output_lock, sha256_file
from ..memory import check_samples, max_samples
from ..metrics import agreement, runs_agreement, to_labels
from ..models import create_model, get_spec
from ..models.checkpoint import QAT_FORMAT, read_checkpoint, state_dict_from
from ..models.registry import WEIGHTS_DIR
from ..models.routing import RoutingOutputs, bra_blocks, recording, run_torch
from ..models.routing_margin import DEFAULT_MARGIN, blocks_margin_hinge
from ..preprocess import preprocess_all
from . import qat_checkpoint as files
from .int8 import model_config, quantize, toolkit_version
from .prepare import qat_config
from .settings import DEFAULT_MAX_ROUTING_REGRET

WARMUP_STEPS = 10
# QAT starts from a stricter PTQ-QAR point than an export's default (0.002): on the demo model the search then keeps
# block 0's position embedding float too (held-out decisive 0.988 -> 0.9965 before any training).
START_MAX_ROUTING_REGRET = DEFAULT_MAX_ROUTING_REGRET / 2
MIN_MARGIN = 0.02   # the least relative lead the routing hinge asks of every teacher top-k region
MAX_SEED = 2**64 - 1   # torch.manual_seed takes 64 bits
MAX_HELD_OUT_DROP = 0.05   # a held-out figure that falls this much below the PTQ start means the training hurt
MAX_ROUTING_WEIGHT = 1e4   # far above any useful weight (default 5), far below what overflows a float32 loss
# The margin hinge is below --margin (< 1) per query, the distillation loss ~1e-3: a weight of 100 already leaves the
# output term no say (train_demo's useful range is 0.3-1), so anything above is a typo.
MAX_ROUTING_MARGIN = 100.0


@dataclass
class QATSettings:
    model: str
    checkpoint: str | None = None
    data: list[str] = field(default_factory=list)     # image folders / images / videos; empty: synthetic scenes
    samples: int = 512
    val_samples: int = 32
    calib_samples: int = 128
    steps: int = 1000
    batch: int = 8
    lr: float = 2e-5
    routing_weight: float = 5.0
    routing_margin: float = 0.0          # weight of the teacher-free margin hinge on the student's affinities; 0: off
    margin: float = DEFAULT_MARGIN       # the relative k-th/(k+1)-th gap that hinge asks for
    seed: int = 0
    input_size: tuple[int, int] | None = None
    max_routing_regret: float = START_MAX_ROUTING_REGRET
    output: str | None = None
    resume: bool = False
    force: bool = False
    save_every: int = 50
    device: str = "auto"

    def validate(self) -> None:
        get_spec(self.model)
        for name in ("samples", "val_samples", "calib_samples", "steps", "batch", "save_every"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= 1, not {value!r}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise UserError(f"--lr must be in (0, 1], not {self.lr}")
        if not (math.isfinite(self.routing_weight) and 0 <= self.routing_weight <= MAX_ROUTING_WEIGHT):
            raise UserError(f"--routing-weight must be in [0, {MAX_ROUTING_WEIGHT:g}], not {self.routing_weight}")
        if not (_real(self.routing_margin) and 0 <= self.routing_margin <= MAX_ROUTING_MARGIN):
            raise UserError(f"--routing-margin must be in [0, {MAX_ROUTING_MARGIN:g}] (0: off; 0.3-1 made the demo "
                            f"model's routes decisive), not {self.routing_margin}")
        if not (_real(self.margin) and 0 < self.margin < 1):
            raise UserError(f"--margin must be in (0, 1) (a share of each query's affinity spread; default "
                            f"{DEFAULT_MARGIN}), not {self.margin}")
        if not (isinstance(self.max_routing_regret, (int, float)) and 0 < self.max_routing_regret <= 1):
            raise UserError(f"--max-routing-regret must be in (0, 1], not {self.max_routing_regret}")
        if type(self.seed) is not int or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be a whole number from 0 to 2**64-1, not {self.seed!r}")
        if self.samples < self.batch:
            raise UserError(f"--samples {self.samples} is fewer than the batch of {self.batch}")
        least = get_spec(self.model).min_input_size
        if self.input_size is not None and min(self.input_size) < least:
            raise UserError(f"--input-size must be at least {least} {least}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, not {self.device}")

    def fingerprint(self, world: int) -> dict:
        """What a resumed run must share with the saved one (the output, --resume/--force and the save interval
        do not change the result)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("output", "resume", "force", "save_every",
                                                                    "device")}
        keep["input_size"] = list(self.input_size) if self.input_size else None
        # inputs by resolved path, however they were spelled; the run's fingerprint adds their content hashes
        keep["checkpoint"] = os.path.realpath(self.checkpoint) if self.checkpoint else None
        keep["data"] = [os.path.realpath(d) for d in self.data]
        return {**keep, "processes": world}


# --------------------------------------------------------------------------------------------------- distributed
def distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (WORLD_SIZE > 1: gloo on CPU, nccl on CUDA) or a plain process."""
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this PyTorch sees no CUDA device; use --device cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, dev


# ----------------------------------------------------------------------------------------------------------- data
# Held per training sample, in float32 sample sizes: the train/held-out arrays, the decoded model-sized uint8 images
# they are made from, and the copy the run's data digest makes of them.
SAMPLE_COPIES = 2.25


def training_data(settings: QATSettings, size: tuple[int, int], log=print) -> tuple[np.ndarray, np.ndarray, str]:
    """(train (n, 3, H, W), held-out (m, 3, H, W), description), preprocessed like inference. Refused before
    anything is rendered or decoded when the samples cannot fit in memory."""
    want = settings.samples + settings.val_samples
    if not settings.data:
        check_samples(want, size, SAMPLE_COPIES, "--samples")
        train = [render_scene(seed, size)[0] for seed in scene_set("qat_train", settings.samples)]
        val = [render_scene(seed, size)[0] for seed in scene_set("qat_val", settings.val_samples)]
        desc = f"synthetic scenes (seed bases {SCENE_SETS['qat_train'].base} / {SCENE_SETS['qat_val'].base} held out)"
    else:
        # the data may hold fewer images than asked for: collect at most one more than fits, then refuse if over
        limit, images, notes = min(want, max_samples(size, SAMPLE_COPIES) + 1), [], []
        for src in settings.data:
            images += collect_images(Path(src), limit - len(images), notes=notes, what="--data", size=size)
            if len(images) >= limit:
                break
        check_samples(len(images), size, SAMPLE_COPIES, "--samples")
        for note in notes:
            log(note)
        n_val = settings.val_samples if len(images) >= want else max(1, len(images) // 8)
        if len(images) - n_val < settings.batch:
            raise UserError(f"--data holds {len(images)} images: QAT needs at least {settings.batch + n_val} "
                            f"(a batch of {settings.batch} plus {n_val} held out); add images or lower --batch")
        if len(images) < want:
            log(f"note: --data holds {len(images)} images, fewer than the {want} asked for: training on "
                f"{len(images) - n_val}, holding out {n_val}")
        train, val = images[:-n_val], images[-n_val:]
        desc = ", ".join(settings.data)
    return preprocess_all(train, size), preprocess_all(val, size), desc


def batch_indices(seed: int, step: int, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The global batch of ``step`` (indices into the training set) and which of its images are flipped: a pure
    function of (seed, step), so resuming and process count do not change the data a step sees."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    flips = np.random.default_rng([seed, 1 << 20, step]).random(batch) < 0.5
    return order[i * batch:(i + 1) * batch], flips


# --------------------------------------------------------------------------------------------------------- losses
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over classes (dim 1), averaged over pixels / images."""
    kl = F.kl_div(F.log_softmax(student.float(), 1), F.log_softmax(teacher.float(), 1), log_target=True,
                  reduction="none")
    return kl.sum(1).mean()


def routing_margin_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], topk: list[int]) -> torch.Tensor:
    """Routing term on region affinities (each (N, R, R)), invariant to the affinities' scale (so it cannot be met by
    inflating q and k): per query, margins are taken relative to that model's own spread (max - min). A margin
    ranking hinge: the student's weakest teacher-top-k region must lead its strongest other region by half the
    teacher's relative margin, at least ``MIN_MARGIN``; plus the mean squared difference of the standardized
    affinity rows (a dense signal for every query, near-ties included)."""
    losses = []
    for s, t, k in zip(student, teacher, topk):
        t = t.detach().float()
        s = s.float()
        ordered = t.sort(-1, descending=True).values
        t_spread = (ordered[..., 0] - ordered[..., -1]).clamp_min(1e-6)                  # (N, R)
        s_spread = (s.amax(-1) - s.amin(-1)).clamp_min(1e-6)
        dense = (((s - s.mean(-1, keepdim=True)) / s_spread[..., None]
                  - (t - t.mean(-1, keepdim=True)) / t_spread[..., None]) ** 2).mean()
        if t.shape[-1] <= k:
            losses.append(dense)
            continue
        margin = (ordered[..., k - 1] - ordered[..., k]) / t_spread
        chosen = torch.zeros_like(t, dtype=torch.bool).scatter_(-1, t.topk(k, -1).indices, True)
        lead = (s.masked_fill(~chosen, float("inf")).amin(-1) - s.masked_fill(chosen, float("-inf")).amax(-1))
        hinge = F.relu(torch.clamp(0.5 * margin, min=MIN_MARGIN) - lead / s_spread)
        losses.append(hinge.mean() + dense)
    return torch.stack(losses).mean() if losses else torch.zeros(())


def losses(x: torch.Tensor, teacher_run: RoutingOutputs, student_run: RoutingOutputs, topk: list[int],
           margin: float = DEFAULT_MARGIN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's (distillation, routing) losses of the student against the teacher, and the teacher-free margin
    hinge on the student's own quantized affinities."""
    with torch.no_grad():
        t_out, *_ = teacher_run(x)
        t_aff = teacher_run.affinities
    s_out, *_ = student_run(x)
    return (distillation_loss(s_out, t_out), routing_margin_loss(student_run.affinities, t_aff, topk),
            blocks_margin_hinge(student_run.affinities, topk, margin))


# ----------------------------------------------------------------------------------------------------- evaluation
def held_out_metrics(student: nn.Module, refs: list, val: np.ndarray, batch: int) -> dict:
    """Routing (decisive, regret, strict) and label agreement of ``student`` against the teacher's runs ``refs``."""
    outs = [run_torch(student, val[i:i + batch]) for i in range(0, len(val), batch)]
    m = runs_agreement(refs, outs)
    labels = agreement(to_labels(np.concatenate([r.logits for r in refs])),
                       to_labels(np.concatenate([o.logits for o in outs])))
    return {"routing_decisive": round(m["routing_decisive"], 6), "routing_regret": round(m["routing_regret"], 6),
            "routing_strict": round(m["routing_strict"], 6), "label_agreement": round(labels, 6)}


# ------------------------------------------------------------------------------------------------------- training
class StopRequest:
    """Ctrl-C / SIGTERM / SIGHUP during training only set a flag; the loop stops at the next step boundary, after
    saving the state, so an interrupted run never leaves a half-updated model."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._set)
        except ValueError:  # not the main thread: signals stay as they are
            pass
        return self

    def _set(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def raise_stop(self, message: str):
        from ..console import Terminated
        raise (KeyboardInterrupt(message) if self.signum in (0, signal.SIGINT) else Terminated(message))


def load_teacher(settings: QATSettings) -> tuple[nn.Module, dict, dict]:
    """The FP32 teacher, its state dict as stored (original dtypes) and where it came from."""
    spec = get_spec(settings.model)
    path = Path(settings.checkpoint) if settings.checkpoint else (
        WEIGHTS_DIR / spec.shipped_weights if spec.shipped_weights else None)
    if path is None:
        raise UserError(f"{settings.model} ships no weights: pass --checkpoint with your FP32 model (QAT distils "
                        f"from it)")
    stored = read_checkpoint(path)   # read once: the teacher's weights, and the checkpoint's reference as stored
    if isinstance(stored, dict) and stored.get("format") == QAT_FORMAT:
        raise UserError(f"{path} is a QAT checkpoint: pass the original FP32 checkpoint (QAT always starts from it)")
    state = state_dict_from(stored, path)
    teacher = create_model(settings.model, checkpoint=path, state=state)
    origin = {"origin": "checkpoint" if settings.checkpoint else "shipped", "path": str(path),
              "sha256": sha256_file(path)}
    return teacher, state, origin


def start_point(settings: QATSettings, teacher: nn.Module, train_x: np.ndarray, saved: dict | None, state_file: Path,
                say=print):
    """The fake-quantized student QAT starts from: PTQ-QAR on the first training images (the keep-float search
    included), or, when resuming, the ranges and config of the saved state."""
    if saved is None:
        calib = train_x[:max(settings.batch, settings.calib_samples // settings.batch * settings.batch)]
        # a small training set need not be whole batches of --batch: max ranges and the search's pooled routing
        # metrics do not depend on the batching, so calibrate in the largest batches that divide it
        per = next(b for b in range(settings.batch, 0, -1) if len(calib) % b == 0)
        say(f"PTQ-QAR start point: calibrating on {len(calib)} training images")
        return quantize(teacher, calib.reshape(-1, per, *calib.shape[1:]), model_config(teacher, "qar"),
                        max_regret=settings.max_routing_regret, log=say)
    ranges = {k: v.numpy() for k, v in saved["quantizers"].items()}
    try:
        return quantize(teacher, train_x[:0][None], qat_config(saved, teacher), ranges, log=say)
    except (KeyError, ValueError, RuntimeError):
        raise UserError(f"{state_file} holds INT8 ranges that do not fit {settings.model}: move it away to start "
                        f"over") from None


def resume(student: nn.Module, optimizer, schedule, saved: dict, teacher_keys: set[str], state_file: Path) -> int:
    """Load a saved state's weights, optimizer and schedule (its quantizers were restored by :func:`start_point`);
    returns the step it stopped at."""
    if set(saved["student"]) != teacher_keys:
        raise UserError(f"{state_file} holds weights of another model: move it away to start over")
    try:
        student.load_state_dict(saved["student"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        files.check_optimizer(optimizer, state_file)
        schedule.load_state_dict(saved["scheduler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{state_file} is damaged ({short_reason(exc)}): move it away to start over") from None
    return saved["step"]


def train(settings: QATSettings, log=print) -> tuple[Path, dict]:
    """Run (or resume) QAT; returns the checkpoint path and its ``train`` record."""
    settings.validate()
    rank, world, device = distributed(settings.device)
    say = log if rank == 0 else (lambda *_: None)
    if settings.batch % world:
        raise UserError(f"--batch {settings.batch} does not split over {world} processes: use a multiple of {world}")
    output = Path(settings.output or f"{settings.model}-qat.pt")
    inputs = [settings.checkpoint, *settings.data]
    files.check_output(output, settings.force, settings.resume, inputs)   # fail fast, before loading anything
    state_file = files.state_path(output)
    spec = get_spec(settings.model)
    size = tuple(settings.input_size or spec.input_size)
    torch.manual_seed(settings.seed)

    with output_lock(output, "biformer-qat") if rank == 0 else contextlib.nullcontext():
        # again under the lock: another run may have written it meanwhile
        files.check_output(output, settings.force, settings.resume, inputs)
        teacher, reference_state, reference = load_teacher(settings)
        train_x, val_x, data_desc = training_data(settings, size, say)
        fingerprint = {**settings.fingerprint(world), "model": settings.model, "reference_sha256": reference["sha256"],
                       "data_sha256": _array_digest(train_x, val_x), "toolkit": toolkit_version(), "qat": QAT_RECIPE}
        saved = None
        if settings.resume:
            saved = files.read_state(state_file)
            files.check_same_run(saved["fingerprint"], fingerprint, state_file)
        started = time.perf_counter()
        quantized = start_point(settings, teacher, train_x, saved, state_file, say)
        student = quantized.model
        refs = [run_torch(teacher, val_x[i:i + settings.batch], affinities=True)
                for i in range(0, len(val_x), settings.batch)]
        before = saved["before"] if saved else held_out_metrics(student, refs, val_x, settings.batch)
        say(f"held out ({len(val_x)} images), PTQ-QAR: " + _fmt(before))

        teacher.to(device)
        student.to(device)
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(settings.steps))
        teacher_keys = set(teacher.state_dict())
        step = resume(student, optimizer, schedule, saved, teacher_keys, state_file) if saved else 0
        if saved:
            say(f"resuming {state_file} at step {step}/{settings.steps}")
        model = student
        if world > 1:
            model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.index is not None
                                                        else None)
        student_run, teacher_run = RoutingOutputs(model, affinities=True), RoutingOutputs(teacher, affinities=True)
        topk = [b.topk for b in bra_blocks(student)]
        say(f"loss: output KL + {settings.routing_weight:g} x teacher routing ranking"
            + (f" + {settings.routing_margin:g} x routing margin hinge (margin {settings.margin:g})"
               if settings.routing_margin else ""))
        history = list(saved.get("history", [])) if saved else []
        elapsed_before = saved.get("seconds", 0.0) if saved else 0.0

        last_saved = [saved["step"] if saved else -1]

        def save_state(at: int):
            last_saved[0] = at
            if rank == 0:
                files.save(state_file, {
                    "format": files.STATE_FORMAT, "fingerprint": fingerprint, "step": at,
                    "student": float_weights(student, teacher_keys), "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(), "quantizers": _ranges(quantized.amax),
                    "config": quantized.config, "before": before, "history": history,
                    "seconds": elapsed_before + time.perf_counter() - started})

        from tqdm import tqdm
        bar = tqdm(total=settings.steps, initial=step, desc="QAT", unit="step", disable=None if rank == 0 else True,
                   leave=False)
        with StopRequest() as stop:
            with recording(bra_blocks(student), gradients=True):   # the routing loss reaches q/k
                while step < settings.steps:
                    idx, flips = batch_indices(settings.seed, step, len(train_x), settings.batch)
                    x = train_x[idx].copy()
                    x[flips] = x[flips][..., ::-1]
                    x = torch.from_numpy(np.ascontiguousarray(x[rank::world])).to(device)
                    out_loss, route_loss, hinge = losses(x, teacher_run, student_run, topk, settings.margin)
                    loss = out_loss + settings.routing_weight * route_loss
                    if settings.routing_margin:   # 0 leaves the loss (and its graph) as without the term
                        loss = loss + settings.routing_margin * hinge
                    if not torch.isfinite(loss):
                        raise UserError(f"QAT diverged at step {step} (loss {loss.item()}): lower --lr; the last good "
                                        f"state stays in {state_file}" if state_file.exists() else
                                        f"QAT diverged at step {step}: lower --lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    history.append([step, round(out_loss.item(), 6), round(route_loss.item(), 6),
                                    round(hinge.item(), 6)])
                    bar.update(1)
                    bar.set_postfix(kl=f"{out_loss.item():.4f}", route=f"{route_loss.item():.4f}",
                                    margin=f"{hinge.item():.4f}")
                    if _any_rank(stop.signum, world):
                        save_state(step)
                        bar.close()
                        stop.raise_stop(f"stopped at step {step}/{settings.steps}, state saved in {state_file}: "
                                        f"run the same command with --resume to continue")
                    if step % settings.save_every == 0 and step < settings.steps:
                        save_state(step)
                bar.close()
            if last_saved[0] != step:
                save_state(step)   # the trained weights are kept even if the evaluation below is interrupted
            student.to("cpu")
            teacher.to("cpu")
            after = held_out_metrics(student, refs, val_x, settings.batch)
            if stop.signum:
                stop.raise_stop(f"stopped after the last step, state saved in {state_file}: run the same command "
                                f"with --resume to write the checkpoint")
        say(f"held out ({len(val_x)} images), QAT-QAR: " + _fmt(after))
        warn_if_worse(before, after, say)
        record = {"settings": {**settings.fingerprint(world), "data": data_desc}, "steps": step,
                  "processes": world, "seconds": round(elapsed_before + time.perf_counter() - started, 1),
                  "held_out": len(val_x), "before": before, "after": after,
                  "final_loss": history[-1][1:] if history else None}
        if rank == 0:
            weights = float_weights(student, teacher_keys)
            files.save(output, {
                "format": files.QAT_FORMAT, "version": files.QAT_VERSION, "model": settings.model,
                "input_size": list(size), "routing": "qar", "toolkit": toolkit_version(),
                "state_dict": weights, "quantizers": _ranges(quantized.amax), "config": quantized.config,
                "reference_state_dict": reference_state, "reference": reference, "train": record})
            if state_file.is_file() and not state_file.is_symlink():
                state_file.unlink()   # the run finished: its resume state is ours and no longer needed
    return output, record


def warn_if_worse(before: dict, after: dict, say=print) -> None:
    """A held-out figure that fell clearly below the PTQ-QAR start means the training hurt: say so."""
    worse = [k for k in ("label_agreement", "routing_decisive") if before[k] - after[k] > MAX_HELD_OUT_DROP]
    if worse:
        say(f"warning: QAT made the held-out {' and '.join(worse)} clearly worse than its PTQ-QAR start "
            f"({', '.join(f'{before[k]:.4f} -> {after[k]:.4f}' for k in worse)}): this checkpoint is likely "
            f"worse than calibrating; re-run with a lower --lr")


QAT_RECIPE = 1   # bump when the loss or the schedule changes: a saved state of another recipe never resumes


def float_weights(student: nn.Module, keys: set[str]) -> dict[str, torch.Tensor]:
    """The student's float weights under the FP32 model's keys (its quantizer buffers are saved as ranges)."""
    return {k: v.detach().float().clone() for k, v in student.state_dict().items() if k in keys}


def _lr_factor(total: int):
    def factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS))))
    return factor


def _any_rank(flag: int, world: int) -> bool:
    if world == 1:
        return bool(flag)
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _ranges(amax: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in amax.items()}


def _array_digest(*arrays: np.ndarray) -> str:
    import hashlib
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(m: dict) -> str:
    return (f"decisive {m['routing_decisive']:.4f}, regret {m['routing_regret']:.4f}, strict "
            f"{m['routing_strict']:.4f}, label agreement {m['label_agreement']:.4f}")

