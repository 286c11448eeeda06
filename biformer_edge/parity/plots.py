"""The routing-margin plot of a parity check (``routing_margins.png``, a report beside ``parity.md``): per BRA block,
the distribution over query regions of the FP32 relative margin (k-th minus (k+1)-th region affinity over the
query's affinity spread), and where the queries with a flipped route fall on it. Flips left of the 5 % line are
near-ties; flips right of it changed what a query attends to. Needs matplotlib (the ``apps`` extra); skipped
without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import DECISIVE_MARGIN, route_margins, routing_overlap


def write_margin_plot(path: Path, ref_routing: list[np.ndarray], test_routing: list[np.ndarray],
                      affinity: list[np.ndarray], title: str) -> str | None:
    """Write the plot to ``path`` (atomically, never through a link); returns why it was skipped, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no routing_margins.png (pip install 'biformer-edge[apps]')"
    from ..fileio import write_file

    blocks = len(ref_routing)
    fig, axes = plt.subplots(1, blocks, figsize=(3.2 * blocks, 2.8), squeeze=False)
    bins = np.logspace(-4, 0, 33)
    for i, (r, t, a, ax) in enumerate(zip(ref_routing, test_routing, affinity, axes[0])):
        k = r.shape[-1]
        margin, _, _ = route_margins(r, a)
        agree, _ = routing_overlap(r, t, a)
        flipped = agree < k
        margin = np.clip(margin, bins[0], 1.0)
        ax.hist(margin, bins=bins, color="#9ab", label="all queries")
        ax.hist(margin[flipped], bins=bins, color="#d43", label="with a flipped route")
        ax.axvline(DECISIVE_MARGIN, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(f"block {i} (k={k}): {flipped.sum()}/{flipped.size} queries flip, "
                     f"{(flipped & (margin >= DECISIVE_MARGIN)).sum()} decisively", fontsize=8)
        ax.set_xlabel("FP32 margin / spread", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, metadata={"Software": None})
    plt.close(fig)
    write_file(path, buf.getvalue())
    return None
