"""A one-line progress bar on stderr (no dependency). On a terminal it redraws itself in
place; otherwise it prints one line per step."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True, width: int = 24):
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._drawn = False

    def text(self, label: str = "") -> str:
        fraction = self.done / self.total
        filled = int(round(self.width * fraction))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        eta_text = f" eta {_duration(eta)}" if eta is not None and self.done < self.total else ""
        return f"[{bar}] {self.done}/{self.total} {_duration(elapsed)}{eta_text} {label}".rstrip()

    def show(self, label: str = "") -> None:
        """Draws the bar with the case about to run."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.text(label))
            self._drawn = True
        else:
            self.stream.write(self.text(label) + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erases the bar (before other output goes to the same terminal)."""
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def advance(self, steps: int = 1) -> None:
        self.done += steps

    def finish(self) -> None:
        self.clear()
