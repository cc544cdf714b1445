"""Progress inside an epoch, for training and evaluation alike: a tqdm bar on a terminal, else periodic lines.

Piped to a file (a cluster job, ``nohup``, CI) a bar writes nothing readable, so off a terminal a line such as

    train epoch 3/12  step 40/90 (44%)  loss 0.5310  lr 1.20e-03  312.4 img/s  eta 0:00:12

is printed every ``interval`` steps and at least every ``seconds`` seconds (as timm's ``--log-interval``); a step that
takes longer than ``seconds`` (a large model on a CPU, a big image under sliding-window inference) is reported while it
runs (``train epoch 1/80  step 3/16 (19%)  still in step 4 (0:01:30 so far)``), so a run is never silent for minutes.
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from collections.abc import Iterable, Iterator

import torch.distributed as dist
from tqdm import tqdm

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """Iterate ``items`` (``total`` of them, default ``len(items)``) and report progress after each :meth:`update`.

    ``enabled``: report (default: in the main process only, under torchrun); ``stream``: where the lines go (on a
    terminal the bar goes to stderr instead); ``final``: always report the last step (off: only a slow loop is
    reported, a set-up check that is usually quick).
    """

    def __init__(self, items: Iterable, desc: str, total: int | None = None, enabled: bool | None = None,
                 interval: int = 50, seconds: float = 30.0, stream=None, final: bool = True):
        if enabled is None:
            enabled = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        self.items, self.desc = items, desc
        self.total = total if total is not None else len(items)  # type: ignore[arg-type]
        self.interval, self.seconds, self.final = max(1, interval), seconds, final
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.bar = tqdm(total=self.total, desc=desc, leave=False) if enabled and sys.stderr.isatty() else None
        self.step = self.samples = 0
        self.started = self.last = self.step_started = time.perf_counter()
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator:
        iterator = iter(self.items)  # a DataLoader starts its worker processes here, before the heartbeat thread
        stop = threading.Event()
        beat = None
        if self.enabled and self.bar is None:
            beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
            beat.start()
        try:
            yield from iterator
        finally:
            stop.set()
            if beat is not None:
                beat.join()
            if self.bar is not None:
                self.bar.close()

    def _heartbeat(self, stop: threading.Event) -> None:
        """Off a terminal: a line while a step runs longer than ``seconds`` without one (steps that end in time are
        reported by :meth:`update`)."""
        while not stop.wait(min(1.0, self.seconds / 4)):
            with self.lock:
                now = time.perf_counter()
                if min(now - self.last, now - self.step_started) < self.seconds or self.step >= self.total:
                    continue
                self.last = now
                print(f"{self.desc}  step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)  "
                      f"still in step {self.step + 1} ({_clock(now - self.step_started)} so far)", file=self.stream,
                      flush=True)

    def update(self, samples: int, **values: float) -> None:
        """One step of ``samples`` items done; ``values`` (loss, lr, ...) are shown with it."""
        self.step += 1
        self.samples += samples
        if not self.enabled:
            return
        shown = {k: (f"{v:.2e}" if k == "lr" else f"{v:.4f}") for k, v in values.items()}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(shown, refresh=False)
            return
        with self.lock:
            now = self.step_started = time.perf_counter()
            due = self.step % self.interval == 0 or now - self.last >= self.seconds or \
                (self.final and self.step == self.total)
            if not due:
                return
            self.last = now
            elapsed = now - self.started
            rate = self.samples / elapsed if elapsed > 0 else float("inf")
            eta = elapsed / self.step * (self.total - self.step)
            fields = [f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)",
                      *(f"{k} {v}" for k, v in shown.items()), f"{rate:.1f} img/s", f"eta {_clock(eta)}"]
            print(f"{self.desc}  " + "  ".join(fields), file=self.stream, flush=True)
