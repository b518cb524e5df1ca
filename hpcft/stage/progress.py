"""Progress for downloads: bars (per file + total) on a terminal, plain periodic lines
otherwise (Slurm logs, CI, pipes), and a one-line summary."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, TextIO


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _bar(frac: float, width: int = 24) -> str:
    frac = min(1.0, max(0.0, frac))
    full = int(frac * width)
    return "█" * full + "░" * (width - full)


@dataclass
class _File:
    name: str
    size: int
    done: int = 0


@dataclass
class Progress:
    """Thread-safe byte counter with a renderer thread. ``quiet`` prints nothing."""

    label: str
    total_bytes: int
    total_files: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    interval: Optional[float] = None
    tty: Optional[bool] = None

    def __post_init__(self):
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self.done_bytes = 0
        self.done_files = 0
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._drawn = 0
        if self.tty is None:
            self.tty = hasattr(self.stream, "isatty") and self.stream.isatty() and os.environ.get("TERM") != "dumb"
        if self.interval is None:
            env = os.environ.get("HPCFT_PROGRESS_INTERVAL")
            self.interval = float(env) if env else (0.2 if self.tty else 10.0)
        self._thread: Optional[threading.Thread] = None

    # ---- counters (called from download threads) --------------------------
    def file_started(self, name: str, size: int) -> None:
        with self._lock:
            self._files[name] = _File(name, size)

    def add(self, name: str, n: int) -> None:
        with self._lock:
            self.done_bytes += n
            f = self._files.get(name)
            if f:
                f.done += n

    def file_done(self, name: str) -> None:
        with self._lock:
            self._files.pop(name, None)
            self.done_files += 1

    # ---- rendering --------------------------------------------------------
    def __enter__(self) -> "Progress":
        if not self.quiet:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.tty and not self.quiet:
            self._clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tty:
                self._draw()
            else:
                self.stream.write(self._plain() + "\n")
                self.stream.flush()

    def rate(self) -> float:
        elapsed = max(1e-6, time.monotonic() - self.start)
        return self.done_bytes / elapsed

    def _plain(self) -> str:
        with self._lock:
            done, files = self.done_bytes, self.done_files
        pct = 100.0 * done / self.total_bytes if self.total_bytes else 100.0
        return (f"  {self.label}: {human(done)} / {human(self.total_bytes)} ({pct:.0f}%), "
                f"{files}/{self.total_files} files, {human(self.rate())}/s")

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}A\x1b[J")
            self.stream.flush()
            self._drawn = 0

    def _draw(self) -> None:
        with self._lock:
            active = sorted(self._files.values(), key=lambda f: f.name)[:6]
            done = self.done_bytes
        frac = done / self.total_bytes if self.total_bytes else 1.0
        lines = [f"  {_bar(frac)} {human(done)}/{human(self.total_bytes)} {human(self.rate())}/s "
                 f"[{self.done_files}/{self.total_files} files] {self.label}"]
        for f in active:
            ffrac = f.done / f.size if f.size else 1.0
            lines.append(f"    {_bar(ffrac, 16)} {ffrac * 100:5.1f}% {human(f.size):>9}  {f.name[-50:]}")
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}A")
        self.stream.write("".join(line[:160] + "\x1b[K\n" for line in lines) + "\x1b[J")
        self.stream.flush()
        self._drawn = len(lines)
