"""devtools/wait.py: the one helper every test waits through."""

from __future__ import annotations

import time

import pytest

from devtools.wait import WaitTimeout, wait_for


def test_returns_the_first_value_that_satisfies_until():
    seen = iter([1, 2, 3, 4])
    assert wait_for(lambda: next(seen), until=lambda v: v >= 3, timeout=5, what="three", interval=0) == 3


def test_timeout_names_what_it_waited_for_and_the_last_value():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"waiting for the job to end; last seen: \{'state': 'RUNNING'\}"):
        wait_for(lambda: {"state": "RUNNING"}, until=lambda st: st["state"] == "COMPLETED", timeout=0.3,
                 what="the job to end", interval=0.05)
    assert time.monotonic() - t0 < 2


def test_fail_stops_at_once():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match="can no longer happen; last seen: FAILED"):
        wait_for(lambda: "FAILED", until=lambda s: s == "COMPLETED", fail=lambda s: s == "FAILED", timeout=30,
                 what="completion")
    assert time.monotonic() - t0 < 1


def test_errors_listed_in_retry_on_count_as_not_yet_and_are_shown():
    calls = []

    def probe():
        calls.append(1)
        if len(calls) < 3:
            raise FileNotFoundError("progress.jsonl")
        return "ok"

    assert wait_for(probe, timeout=5, what="the file", interval=0, retry_on=(FileNotFoundError,)) == "ok"
    with pytest.raises(WaitTimeout, match="last seen: FileNotFoundError: nope"):
        wait_for(lambda: (_ for _ in ()).throw(FileNotFoundError("nope")), timeout=0.1, what="x", interval=0.02,
                 retry_on=(FileNotFoundError,))


def test_other_errors_propagate():
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, timeout=5, what="x")
