"""What the worker prints to the job's log: ``hpcft: ...`` lines on stdout, ``hpcft: error: ...``
and ``hpcft: warning: ...`` on stderr, each flushed at once (a killed job keeps what it said)."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"hpcft: {msg}", flush=True)


def error(msg: str) -> None:
    print(f"hpcft: error: {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"hpcft: warning: {msg}", file=sys.stderr, flush=True)
