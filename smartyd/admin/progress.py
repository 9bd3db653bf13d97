"""
Progress of a long admin command on the terminal.

Drawn on stderr, and only when stderr is a terminal: stdout stays the one
JSON object every command prints, and a log or a pipe gets no ``\\r`` noise.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``label [#####.....] 12,345/100,000 note`` rewritten in place."""

    WIDTH = 30

    def __init__(self, label: str, total: int | None = None, stream=None, interval: float = 0.2):
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = 0.0
        self._drawn = False

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._shown < self.interval:
            return
        self._shown = now
        if self.total:
            filled = min(self.WIDTH, self.WIDTH * done // max(self.total, 1))
            bar = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done:,}/{self.total:,}"
        else:
            bar = f"{done:,}"
        line = f"{self.label} {bar} {note}"[:150]
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self, done: int | None = None, note: str = "") -> None:
        if not self.enabled:
            return
        if done is not None:
            self.update(done, note, force=True)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
