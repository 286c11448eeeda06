"""The model's input contract: how an RGB image becomes the float32 NCHW tensor every BiFormer here was trained on
and every runtime is fed (parity, benchmark, video demo, calibration). numpy and OpenCV only.

Normalisation is ImageNet's mean/std in 0-255 units (the official BiFormer and mmseg pipelines), RGB channel order,
bilinear resize to the artifact's static input size.
"""
from __future__ import annotations

import cv2
import numpy as np

MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
MEAN.setflags(write=False)
STD.setflags(write=False)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``HxWx3`` -> float32 ``1x3xHxW``, ``(image - MEAN) / STD`` (0-255 units)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    x = (image.astype(np.float32) - MEAN) * (1.0 / STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def denormalize(x) -> np.ndarray:
    """Inverse of :func:`normalize`: ``1x3xHxW`` or ``3xHxW`` float (numpy array or torch tensor) -> uint8 RGB
    ``HxWx3``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected a batch of one, got shape {x.shape}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected 3xHxW or 1x3xHxW, got shape {x.shape}")
    img = x.transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB resized to ``size`` (H, W): the resize step of :func:`preprocess` alone, so that image
    readers can shrink each image as soon as it is decoded and keep only the small copy."""
    if rgb.shape[:2] != tuple(size):
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return rgb


def preprocess(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, resized to ``size`` (H, W) and normalised. The one preprocessing used by
    parity, the benchmark, calibration and the video demo."""
    return normalize(resize(rgb, size))[0]


def preprocess_all(images, size: tuple[int, int]) -> np.ndarray:
    """A sequence of HxWx3 uint8 RGB images -> (n, 3, H, W) float32, each as :func:`preprocess`, written into one
    array (no per-image float copies and no stacked copy next to it)."""
    out = np.empty((len(images), 3, *size), dtype=np.float32)
    for i, im in enumerate(images):
        out[i] = preprocess(im, size)
    return out
