"""A small Keras-like progress bar for one epoch, drawn on a text stream (stderr).

It redraws at most every ``min_interval`` seconds, so asking it for the
running loss/accuracy (which on CUDA means a host sync) happens a few times a
second, never once per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressBar:
    """``Epoch 3/15  312/422 [=================>......] - loss: 0.0712 - accuracy: 0.9781 - ETA: 3s``.

    Args:
        total: steps in the epoch.
        prefix: text before the counter (e.g. ``"Epoch 3/15"``).
        stream: where to draw (default ``sys.stderr``).
        min_interval: seconds between redraws.
        width: characters in the bar itself.
    """

    def __init__(
        self,
        total: int,
        prefix: str = "",
        *,
        stream: TextIO | None = None,
        min_interval: float = 0.2,
        width: int = 28,
    ) -> None:
        self.total = max(total, 1)
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.width = width
        self._start = time.perf_counter()
        self._last_draw = float("-inf")
        self._last_len = 0

    def due(self, step: int) -> bool:
        """Whether :meth:`update` at ``step`` (1-based) would redraw; check it before
        computing the values to show."""
        return step >= self.total or time.perf_counter() - self._last_draw >= self.min_interval

    def update(self, step: int, values: Callable[[], dict[str, float]]) -> None:
        """Redraw at ``step`` (1-based) if due; ``values`` is only called when drawing."""
        if not self.due(step):
            return
        now = time.perf_counter()
        self._last_draw = now
        done = int(self.width * step / self.total)
        bar = (
            "=" * max(done - 1, 0) + (">" if done < self.width else "=") + "." * (self.width - done)
        )
        elapsed = now - self._start
        eta = elapsed / step * (self.total - step) if step else 0.0
        stats = " - ".join(f"{k}: {v:.4f}" for k, v in values().items())
        digits = len(str(self.total))
        line = f"{self.prefix}  {step:>{digits}}/{self.total} [{bar}] - {stats} - ETA: {eta:.0f}s"
        pad = " " * max(self._last_len - len(line), 0)
        self._last_len = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar so the per-epoch summary line replaces it."""
        if self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()
            self._last_len = 0
