"""Calibration data for INT8: recipes and sources (image folders, videos, synthetic scenes); the cache is ``cache.py``.

A recipe (TOML, see the top-level ``calibration/default.toml``) says where samples come from, how many, and the
range method. ``--calib`` takes image folders, single images, video files (frames sampled evenly) or a recipe;
without it the shipped default recipe (synthetic scenes) is used, so ``--int8`` works out of the box. Every sample
goes through the model's own preprocessing (``biformer_edge.preprocess``), the same as at inference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tomllib

from ..calibration_recipes import recipe_file
from ..data.images import collect_images
from ..data.seeds import SCENE_SETS, scene_seed
from ..data.synthetic import render_scene
from ..errors import UserError
from ..memory import check_samples, max_samples
from ..preprocess import preprocess_all

DEFAULT_SAMPLES = 128
WARN_BELOW = 64
METHODS = ("max",)


@dataclass
class Recipe:
    source: list[str] | str = "synthetic"   # "synthetic" or paths (folders, images, videos)
    samples: int = DEFAULT_SAMPLES
    method: str = "max"
    seed: int = SCENE_SETS["calibration"].base   # synthetic scene i: render_scene(scene_seed(seed, i))
    preprocessing: str = "model"
    origin: str = "default"                 # where the recipe came from (for the manifest)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "notes"}


MAX_RECIPE_BYTES = 1 << 20   # a recipe is a few lines of TOML: anything far larger is not one


def load_recipe(path: Path) -> Recipe:
    # a FIFO or a device would block or stream forever on open/read: only regular files are recipes
    if path.exists() and not path.is_file():
        raise UserError(f"calibration recipe {path} is not a regular file: pass a .toml file, or image folders/videos "
                        f"to --calib")
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise UserError(f"calibration recipe {path} is over {MAX_RECIPE_BYTES >> 20} MiB, not a recipe: see "
                            f"calibration/default.toml")
        with open(path, "rb") as f:
            table = tomllib.load(f).get("calibration")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"calibration recipe {path} is unreadable ({exc}): fix the TOML or pass image folders/videos "
                        f"to --calib") from None
    except UnicodeDecodeError:
        raise UserError(f"calibration recipe {path} is not UTF-8 text: a recipe is a TOML file (see "
                        f"calibration/default.toml)") from None
    if not isinstance(table, dict):
        raise UserError(f"calibration recipe {path} has no [calibration] table: see calibration/default.toml")
    unknown = sorted(set(table) - {"source", "samples", "method", "seed", "preprocessing"})
    if unknown:
        raise UserError(f"calibration recipe {path}: unknown key '{unknown[0]}' (keys: source, samples, method, seed, "
                        f"preprocessing)")
    source = table.get("source", "synthetic")
    if source != "synthetic":
        items = [source] if isinstance(source, str) else source
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items) or not items:
            raise UserError(f"calibration recipe {path}: 'source' must be \"synthetic\" or a list of paths")
        source = [str((path.parent / s).resolve()) if not Path(s).is_absolute() else s for s in items]
    recipe = Recipe(source=source, samples=table.get("samples", DEFAULT_SAMPLES), method=table.get("method", "max"),
                    seed=table.get("seed", Recipe.seed), preprocessing=table.get("preprocessing", "model"),
                    origin=str(path))
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    if type(recipe.samples) is not int or recipe.samples < 1:
        raise UserError(f"calibration samples must be a whole number >= 1, not {recipe.samples!r}")
    if recipe.method not in METHODS:
        raise UserError(f"calibration method '{recipe.method}' is not supported: choose {', '.join(METHODS)}")
    if recipe.preprocessing != "model":
        raise UserError(f"calibration preprocessing '{recipe.preprocessing}' is not supported: calibration always "
                        f"uses the model's own preprocessing (\"model\")")
    if type(recipe.seed) is not int or recipe.seed < 0:
        raise UserError(f"calibration seed must be a whole number >= 0, not {recipe.seed!r}")


def resolve_recipe(calib: list[str] | None, samples: int | None) -> Recipe:
    """The recipe of an export: the default one, a recipe file, or image folders / videos given to --calib."""
    calib = list(calib or [])
    if len(calib) == 1 and calib[0].endswith(".toml"):
        recipe = load_recipe(Path(calib[0]))
    elif any(c.endswith(".toml") for c in calib):
        raise UserError("--calib takes either one recipe (.toml) or image folders/videos, not both")
    elif calib:
        recipe = Recipe(source=calib, origin="--calib")
    else:
        recipe = load_recipe(recipe_file("default"))
        recipe.origin = "calibration/default.toml"
    if samples is not None:
        recipe.samples = samples
    check_recipe(recipe)
    if recipe.samples < WARN_BELOW:
        recipe.notes.append(f"warning: {recipe.samples} calibration samples is few (>= {WARN_BELOW} recommended, "
                            f"{DEFAULT_SAMPLES} by default): activation ranges may clip real inputs")
    return recipe


# Held per calibration sample, in float32 sample sizes: the (B, N, 3, H, W) array and the decoded model-sized uint8
# images it is made from.
SAMPLE_COPIES = 1.25


def calibration_inputs(recipe: Recipe, input_shape: tuple[int, int, int, int]) -> np.ndarray:
    """(B, N, 3, H, W) float32 batches of the export's static shape, ``recipe.samples`` rounded up to whole batches
    (the last batch is filled with the first samples again). Refused up front when they cannot fit in memory."""
    N, _, H, W = input_shape
    if recipe.samples < N:
        raise UserError(f"{recipe.samples} calibration samples are fewer than the batch of {N}: pass "
                        f"--calib-samples {N} or more")
    if recipe.source == "synthetic":
        check_samples(-(-recipe.samples // N) * N, (H, W), SAMPLE_COPIES, "--calib-samples")
        images = [render_scene(scene_seed(recipe.seed, i), (H, W))[0] for i in range(recipe.samples)]
    else:
        # sources may hold fewer images than asked for: collect at most one more than fits, then refuse if over
        limit = min(recipe.samples, max_samples((H, W), SAMPLE_COPIES) + 1)
        images = []
        for src in recipe.source:
            images += collect_images(Path(src), limit - len(images), notes=recipe.notes, what="--calib",
                                     size=(H, W))
            if len(images) >= limit:
                break
        if not images:
            raise UserError("the calibration sources hold no images: pass image folders or videos to --calib")
        check_samples(-(-len(images) // N) * N, (H, W), SAMPLE_COPIES, "--calib-samples")
        if len(images) < recipe.samples:
            recipe.notes.append(f"note: the calibration sources hold {len(images)} images, fewer than the "
                                f"{recipe.samples} asked for: calibrating on those")
            recipe.samples = len(images)
            if recipe.samples < N:
                raise UserError(f"the calibration sources hold {recipe.samples} images, fewer than the batch of {N}")
    n_batches = -(-len(images) // N)
    images = (images * 2)[: n_batches * N]
    return preprocess_all(images, (H, W)).reshape(n_batches, N, 3, H, W)
