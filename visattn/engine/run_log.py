"""Per-epoch metrics to TensorBoard, metrics.json and a PNG of the curves."""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import atomic_write, atomic_write_json


class RunLog:
    """Collects one dict of scalars per epoch and writes them out after each epoch (main process only)."""

    def __init__(self, output: str, history: list[dict], meta: dict,
                 panels: tuple[tuple[str, str, tuple[str, ...]], ...], start_epoch: int = 0):
        """``panels``: (title, y-axis label, history keys) of each panel in curves.png; a resumed run
        (``start_epoch`` > 0) drops TensorBoard events of the epochs it trains again."""
        from torch.utils.tensorboard import SummaryWriter

        self.output = output
        self.history = list(history)
        self.meta = dict(meta)
        self.panels = panels
        self.writer = SummaryWriter(os.path.join(output, "tensorboard"),
                                    purge_step=start_epoch + 1 if start_epoch else None)

    def log(self, epoch: int, scalars: dict[str, float], best: dict[str, Any]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
        self.history.append({"epoch": epoch, **scalars})
        atomic_write_json({**self.meta, "best": best, "history": self.history},
                          os.path.join(self.output, "metrics.json"))
        self.plot(os.path.join(self.output, "curves.png"))

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(self.panels), figsize=(5 * len(self.panels), 4), squeeze=False)
        for ax, (title, ylabel, keys) in zip(axes[0], self.panels, strict=True):
            for key in keys:  # a key an epoch lacks (validation between --eval-every epochs) is left out
                points = [(h["epoch"], h[key]) for h in self.history if key in h]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=key)
            ax.set(xlabel="epoch", ylabel=ylabel, title=title)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)

    def close(self) -> None:
        self.writer.close()
