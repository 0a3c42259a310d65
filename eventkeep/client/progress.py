"""Progress reports: a redrawn bar on a terminal, plain periodic lines in logs and CI.

A background thread samples counters the workers keep anyway, so reporting costs nothing
per event. The fraction done comes from input bytes read (compressed bytes, when the input
is compressed) against the inputs' total size, which is known before reading starts; with
standard input there is no total, so no percentage or ETA, only counts and rate.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

Mode = Literal["auto", "bar", "lines", "none"]


@dataclass
class Snapshot:
    done_bytes: int
    total_bytes: int | None
    events: int  # the headline count (events read, or sent)
    imported: int
    rejected: int
    retries: int


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def retries_line(retries: int, reasons: dict[str, int], requests: int) -> str:
    """The summaries' line on retries: how many, why, out of how many requests."""
    why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    return f"  retried: {retries:,} requests" + (f" ({why})" if why else "") + f"; {requests:,} requests in all"


class Progress:
    """Calls `sample()` every `interval` seconds (a fraction of one on a terminal) and prints."""

    def __init__(
        self,
        sample: Callable[[], Snapshot],
        *,
        mode: Mode = "auto",
        interval: float = 10.0,
        stream: TextIO | None = None,
        label: str = "import",
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode = mode
        self.interval = 0.2 if mode == "bar" else max(0.05, interval)
        self.label = label
        self._sample = sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._drawn = False

    def start(self) -> None:
        if self.mode == "none":
            return
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="eventkeep-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.mode == "bar" and self._drawn:
            self._draw(final=True)
            self.stream.write("\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._draw()
            except Exception:  # a broken stderr must not break the import
                return

    def render(self, snap: Snapshot, elapsed: float) -> str:
        rate = snap.events / elapsed if elapsed > 0 else 0.0
        fraction = None
        eta = ""
        if snap.total_bytes:
            fraction = min(1.0, snap.done_bytes / snap.total_bytes)
            if 0 < fraction < 1:
                eta = human_duration(elapsed * (1 - fraction) / fraction)
        if self.label == "pull":
            counts = f"{snap.events:,} events fetched"
        elif self.label == "dry run":
            counts = f"{snap.events:,} events, {snap.imported:,} valid"
        else:
            counts = f"{snap.events:,} events, {snap.imported:,} imported"
        if snap.rejected:
            counts += f", {snap.rejected:,} rejected"
        if snap.retries:
            counts += f", {snap.retries:,} retries"
        speed = f"{rate:,.0f} events/s"
        if self.mode == "bar":
            bar = ""
            if fraction is not None:
                width = 24
                filled = int(fraction * width)
                bar = f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% "
            tail = f" ETA {eta}" if eta else ""
            return f"\r{bar}{counts} | {speed}{tail} | {human_duration(elapsed)}\x1b[K"
        share = f" {fraction * 100:.1f}% done," if fraction is not None else ""
        tail = f", ETA {eta}" if eta else ""
        return f"eventkeep {self.label}:{share} {counts}, {speed}, elapsed {human_duration(elapsed)}{tail}\n"

    def _draw(self, final: bool = False) -> None:
        text = self.render(self._sample(), time.monotonic() - self._started)
        self.stream.write(text)
        self.stream.flush()
        self._drawn = True
