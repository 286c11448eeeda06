"""Parity on a video stream: a deployed runtime's label maps against the FP32 reference's, frame by frame (pixel
agreement) and over time (flicker). Used by the video demo's ``--compare``; numpy only (the reference session is
whatever runs the FP32 model, e.g. ``backends.pytorch.session.TorchSession``)."""
from __future__ import annotations

import time

import numpy as np

from ..metrics import agreement, flicker_rate, to_labels

REFERENCE_BATCH = 8          # frames per FP32 reference run


class Comparison:
    """The FP32 reference on every frame's input, run in batches of ``batch`` frames between deployed frames and
    timed apart. Batching matters on a CPU: a PyTorch call after every frame leaves its thread pool spinning while
    the deployed runtime runs the next frame, which slowed that runtime down by 30 % and more in measurements."""

    def __init__(self, session, label_dtype=np.uint8, batch: int = REFERENCE_BATCH):
        self.session, self.label_dtype, self.batch = session, label_dtype, batch
        self.pending, self.maps, self.agreements, self.seconds = [], [], [], 0.0

    def add(self, x: np.ndarray, labels: np.ndarray, item: dict | None = None) -> None:
        """Queue one frame: ``x`` its 1x3xHxW input, ``labels`` the deployed label map; ``item`` (a contact sheet
        row) gets ``reference`` and ``agreement`` filled in when the batch runs."""
        self.pending.append((x, labels, item))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        refs = to_labels(self.session.run(np.concatenate([x for x, _, _ in self.pending])).logits)
        self.seconds += time.perf_counter() - t0
        for (_, labels, item), ref in zip(self.pending, refs):
            ref = ref.astype(self.label_dtype)
            self.maps.append(ref)
            self.agreements.append(agreement(ref, labels))
            if item is not None:
                item["reference"], item["agreement"] = ref, self.agreements[-1]
        self.pending = []

    def summary(self, deployed_flicker: float) -> dict:
        """Pixel agreement (mean, min, per frame), both flicker rates and their relative difference."""
        self.flush()
        if not self.maps:
            raise ValueError("no frame was compared")
        ref_flicker = flicker_rate(np.stack(self.maps))
        rel = (deployed_flicker - ref_flicker) / ref_flicker if ref_flicker > 0 else \
            (0.0 if deployed_flicker == 0 else None)
        return {
            "reference": f"torch fp32 ({getattr(self.session, 'device', 'cpu')})",
            "reference_ms": round(1e3 * self.seconds / len(self.maps), 3), "reference_batch": self.batch,
            "pixel_agreement_mean": round(float(np.mean(self.agreements)), 6),
            "pixel_agreement_min": round(float(np.min(self.agreements)), 6),
            "pixel_agreement_per_frame": [round(float(a), 6) for a in self.agreements],
            "reference_flicker_rate": round(ref_flicker, 6), "deployed_flicker_rate": round(deployed_flicker, 6),
            "flicker_relative_diff": None if rel is None else round(rel, 6),
        }
