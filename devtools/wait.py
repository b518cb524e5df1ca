"""The one way tests wait: poll a condition until a deadline, and say what was seen last.

Every wait on a job, a file, a port or a log line goes through :func:`wait_for`, so a test
never sleeps a fixed time and hopes, and a test that runs out of time says what it was
waiting for and what it saw instead (the last value the probe returned, or the error it
raised), not just ``assert False``::

    st = wait_for(lambda: hpcft_json("status", run_id), until=lambda st: st["state"] == "COMPLETED",
                  timeout=60, what=f"run {run_id} to complete")

- ``probe()`` is called every ``interval`` seconds (the first call at once); its return
  value is what ``until`` judges (default: truthy) and what ``wait_for`` returns.
- ``fail(value)``: stop at once with that value when it says the wait can no longer succeed
  (a job that FAILED while the test waits for COMPLETED).
- A probe that raises one of ``retry_on`` (default: none) counts as "not yet"; its error is
  what the timeout message shows.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple, Type

_MISSING = object()


class WaitTimeout(AssertionError):
    """A wait ran out of time; an AssertionError, so pytest shows it as a test failure."""


def _show(value: Any, limit: int = 3000) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else "..." + text[-limit:]


def wait_for(probe: Callable[[], Any], *, timeout: float, what: str,
             until: Optional[Callable[[Any], bool]] = None,
             fail: Optional[Callable[[Any], bool]] = None,
             interval: float = 0.2, retry_on: Tuple[Type[BaseException], ...] = (),
             describe: Optional[Callable[[Any], str]] = None) -> Any:
    """Call ``probe`` until ``until(value)`` holds (or ``value`` is truthy); return that value.

    Raises :class:`WaitTimeout` after ``timeout`` seconds, or as soon as ``fail(value)`` holds,
    naming ``what`` and the last value seen (``describe(value)`` when given)."""
    ok = until or bool
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    last: Any = _MISSING
    err: Optional[BaseException] = None
    polls = 0
    while True:
        polls += 1
        try:
            last, err = probe(), None
        except retry_on as e:   # "not yet": keep the error for the message
            err = e
        else:
            if ok(last):
                return last
            if fail is not None and fail(last):
                shown = describe(last) if describe else _show(last)
                raise WaitTimeout(f"gave up waiting for {what} after {time.monotonic() - start:.1f} s: "
                                  f"it can no longer happen; last seen: {shown}")
        if time.monotonic() >= deadline:
            if err is not None:
                seen = f"{type(err).__name__}: {err}"
            elif last is _MISSING:
                seen = "nothing (the probe never returned)"
            else:
                seen = describe(last) if describe else _show(last)
            raise WaitTimeout(f"timed out after {timeout:g} s ({polls} polls) waiting for {what}; last seen: {seen}")
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))
