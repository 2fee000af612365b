"""Progress lines for long commands: a live line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pubctl.backfill import Progress

PLAIN_EVERY_PAGES = 10


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class BackfillReporter:
    """Renders ``Progress`` on ``stream``: rows done / estimated total, rate, ETA."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._last_width = 0
        self._last_plain = 0.0

    def __call__(self, p: Progress) -> None:
        if p.waiting_for:
            # Before the first page: who the backfill waits for, at most every 5 seconds.
            if time.monotonic() - self._last_plain > 5:
                self._last_plain = time.monotonic()
                self.close()
                self.stream.write(f"waiting {p.elapsed:.0f}s for {p.waiting_for}\n")
                self.stream.flush()
            return
        rate = p.rows / p.elapsed if p.elapsed > 0 else 0.0
        total = max(p.estimate, p.rows)
        left = (total - p.rows) / rate if rate > 0 else 0.0
        percent = f" ({100 * p.rows / total:.0f}%)" if total else ""
        line = (
            f"{p.source}: {p.rows:,} / ~{total:,} rows{percent}, {p.enqueued:,} enqueued, "
            f"{rate:,.0f} rows/s, ETA {_duration(left)}"
            + (" - waiting for the applier (--max-backlog)" if p.waiting else "")
        )
        if self.live:
            pad = " " * max(0, self._last_width - len(line))
            self.stream.write("\r" + line + pad)
            self._last_width = len(line)
            self.stream.flush()
        elif p.pages % PLAIN_EVERY_PAGES == 0 or (
            p.waiting and time.monotonic() - self._last_plain > 10
        ):
            self._last_plain = time.monotonic()
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the live line so the summary starts on a fresh one."""
        if self.live and self._last_width:
            self.stream.write("\n")
            self.stream.flush()
            self._last_width = 0
