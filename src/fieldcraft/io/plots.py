"""Plots written as PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

from fieldcraft.io.checkpoint import atomic_write_bytes


def plot_curve(path: str | Path, xs, ys, *, xlabel: str, ylabel: str, title: str = "",
               series: dict[str, tuple[list, list]] | None = None) -> Path:
    """Line plot of ``ys`` against ``xs`` (plus optional named ``series``), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if series:
        for name, (sx, sy) in series.items():
            ax.plot(sx, sy, label=name)
        ax.legend()
    else:
        ax.plot(xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
