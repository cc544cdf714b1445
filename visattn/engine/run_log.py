"""Per-epoch metrics to TensorBoard, metrics.json and a PNG of the curves: the task's panels, then one panel for each
other logged quantity (the named loss parts and statistics of the model-training contract)."""

from __future__ import annotations

import os
import time
from typing import Any

from .checkpoint import atomic_write, atomic_write_json

PANEL_INCHES = (5.0, 4.0)  # curves.png: one panel's width and height
MARGIN_INCHES = (0.75, 0.2, 0.55, 0.4)  # around each panel: left, right, bottom, top
# curves.png is redrawn after an epoch once this long has passed since the run started or last drew it, and when the
# run ends: drawing takes about a second of CPU, a cost short epochs would otherwise pay every time
REDRAW_SECONDS = 30.0


class RunLog:
    """Collects one dict of scalars per epoch and writes them out after each epoch (main process only): TensorBoard
    and metrics.json every epoch, curves.png as :data:`REDRAW_SECONDS` says and at :meth:`close`."""

    def __init__(self, output: str, history: list[dict], meta: dict,
                 panels: tuple[tuple[str, str, tuple[str, ...]], ...], start_epoch: int = 0):
        """``panels``: (title, y-axis label, history keys) of the task's panels in curves.png; a resumed run
        (``start_epoch`` > 0) drops TensorBoard events of the epochs it trains again."""
        from torch.utils.tensorboard import SummaryWriter

        self.output = output
        self.history = list(history)
        self.meta = dict(meta)
        self.panels = panels
        self.writer = SummaryWriter(os.path.join(output, "tensorboard"),
                                    purge_step=start_epoch + 1 if start_epoch else None)
        self.drawn_at = time.monotonic()
        self.drawn_epochs = len(self.history)  # how many epochs curves.png shows

    def log(self, epoch: int, scalars: dict[str, float], best: dict[str, Any]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
        self.history.append({"epoch": epoch, **scalars})
        atomic_write_json({**self.meta, "best": best, "history": self.history},
                          os.path.join(self.output, "metrics.json"))
        if time.monotonic() - self.drawn_at >= REDRAW_SECONDS:
            self.draw()

    def draw(self) -> None:
        """Write curves.png from the history so far."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        panels = [*self.panels, *((key, key, (key,)) for key in self.extra_keys())]
        columns = min(len(panels), 3)
        rows = -(-len(panels) // columns)
        width, height = PANEL_INCHES
        fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
        # fixed margins in inches, room for the tick labels, axis labels and titles: tight_layout's measuring of
        # every text was a third of the plot's time, redone after each epoch
        left, right, bottom, top = MARGIN_INCHES
        fig.subplots_adjust(left=left / (width * columns), right=1 - right / (width * columns),
                            bottom=bottom / (height * rows), top=1 - top / (height * rows),
                            wspace=(left + right) / (width - left - right),
                            hspace=(bottom + top) / (height - bottom - top))
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (title, ylabel, keys) in zip(axes.flat, panels, strict=False):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for key in keys:  # a key an epoch lacks (validation between --eval-every epochs) is left out
                points = [(h["epoch"], h[key]) for h in self.history if key in h]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=key)
            ax.set(xlabel="epoch", ylabel=ylabel, title=title)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        atomic_write(os.path.join(self.output, "curves.png"), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        self.drawn_at, self.drawn_epochs = time.monotonic(), len(self.history)

    def extra_keys(self) -> list[str]:
        """The logged quantities no task panel shows, in the order they first appear (epoch, lr and epoch time
        aside)."""
        shown = {key for _, _, keys in self.panels for key in keys} | {"epoch", "lr", "epoch_seconds"}
        return list(dict.fromkeys(k for h in self.history for k in h if k not in shown))

    def close(self) -> None:
        """Draw the epochs curves.png does not show yet, and close TensorBoard's writer."""
        if self.drawn_epochs != len(self.history):
            self.draw()
        self.writer.close()
