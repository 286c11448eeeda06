"""The photographs the benchmarks measure the default model on: 17 of scikit-image's sample images, saved as PNG.

    python benchmarks/sample_photos.py DIR        # writes DIR/astronaut.png ... (needs: pip install scikit-image)

They are a domain the demo model never saw in training (it learns on synthetic scenes), so they show what INT8 does
to routing on inputs unlike its training data. Every one is bundled with scikit-image (no download).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "hubble_deep_field",
          "immunohistochemistry", "clock", "grass", "gravel", "brick", "cell", "retina", "cat", "microaneurysms")


def write_sample_photos(folder: Path) -> Path:
    """Write the PNGs into ``folder`` (created; existing files of those names are left as they are)."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("the sample photographs come from scikit-image: pip install scikit-image, "
                         "or pass --photos DIR with your own") from None
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        path = folder / f"{name}.png"
        if path.exists():
            continue
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 3:
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(path), image):
            raise SystemExit(f"could not write {path}: check that the folder is writable")
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    a = p.parse_args(argv)
    print(write_sample_photos(Path(a.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
