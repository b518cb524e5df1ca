"""Runtime fault injection and the request log of the loopback hub.

A rule matches a request when its glob (``fnmatch``; ``*`` also matches ``/``)
matches either the raw request path (with query string) or the request's
*file key* ``"{repo_id}/{path_in_repo}"`` -- the latter is protocol-neutral, so
``"*/model.safetensors"`` hits the HF ``resolve`` URL and the ModelScope
``repo?FilePath=`` URL alike.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Rule:
    action: str  # fail | drop | slow | missing | corrupt
    pattern: str
    times: int | None = None  # None: every matching request, forever
    methods: tuple[str, ...] | None = None
    status: int = 500
    after_bytes: int = 0
    rate: float = 0.0  # bytes per second, for slow
    listed: bool = False  # for missing: keep advertising the file in listings
    hits: int = 0

    def matches(self, method: str, keys) -> bool:
        if self.methods and method not in self.methods:
            return False
        return any(k is not None and fnmatch.fnmatchcase(k, self.pattern) for k in keys)


class Faults:
    """Thread-safe fault rules.  Each adder returns the Rule (its ``hits`` counts uses)."""

    def __init__(self):
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(self, pattern: str, *, status: int = 500, times: int | None = 1, methods=None) -> Rule:
        """Answer the next ``times`` matching requests with ``status`` (5xx by default)."""
        return self._add(Rule("fail", pattern, times, _methods(methods), status=status))

    def drop(self, pattern: str, *, after_bytes: int = 0, times: int | None = 1) -> Rule:
        """Send the full headers, then only ``after_bytes`` of the body, then close the socket.

        A response shorter than ``after_bytes`` (a resumed Range request) is not
        dropped and does not use up ``times``.
        """
        return self._add(Rule("drop", pattern, times, ("GET",), after_bytes=after_bytes))

    def slow(self, pattern: str, *, bytes_per_sec: float, times: int | None = None) -> Rule:
        """Trickle the body of matching downloads at ``bytes_per_sec``."""
        return self._add(Rule("slow", pattern, times, ("GET",), rate=float(bytes_per_sec)))

    def missing(self, pattern: str, *, listed: bool = False, times: int | None = None) -> Rule:
        """404 (EntryNotFound) for matching files; hidden from listings unless ``listed``."""
        return self._add(Rule("missing", pattern, times, None, listed=listed))

    def corrupt(self, pattern: str, *, times: int | None = None) -> Rule:
        """Serve flipped bytes (same size) while listings/ETags keep the true sha256."""
        return self._add(Rule("corrupt", pattern, times, ("GET",)))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def take(self, action: str, method: str, keys, when=None) -> Rule | None:
        """The first live rule for ``action`` matching (and ``when(rule)``); consumes one use."""
        with self._lock:
            for rule in self._rules:
                if (rule.action == action and rule.times != 0 and rule.matches(method, keys)
                        and (when is None or when(rule))):
                    rule.hits += 1
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def hidden(self, file_key: str) -> bool:
        """Whether a listing should leave out this file (a ``missing`` rule, not ``listed``)."""
        with self._lock:
            return any(r.action == "missing" and not r.listed and r.times != 0
                       and fnmatch.fnmatchcase(file_key, r.pattern) for r in self._rules)


def _methods(methods) -> tuple[str, ...] | None:
    if methods is None:
        return None
    return (methods,) if isinstance(methods, str) else tuple(methods)


@dataclass
class LogEntry:
    method: str
    path: str  # raw request target, query string included
    status: int
    bytes_sent: int = 0  # body bytes actually written
    range: str | None = None  # the Range request header
    protocol: str = ""  # "hf" | "ms" | ""
    kind: str | None = None  # model | dataset | space
    repo_id: str | None = None
    file: str | None = None  # path in repo, for file downloads
    revision: str | None = None
    fault: str | None = None  # fault action(s) applied, comma-separated ("corrupt,drop")
    auth: str | None = None  # the Authorization header (tests check that tokens are sent, and only sent)
    time: float = field(default_factory=time.time)

    def __str__(self) -> str:
        extra = f" range={self.range}" if self.range else ""
        extra += f" fault={self.fault}" if self.fault else ""
        return f"{self.method} {self.path} -> {self.status} ({self.bytes_sent} B){extra}"


class RequestLog:
    """Every request the hub received, in arrival order.  Iterable; thread-safe.

    An entry is appended when its request arrives and filled in as it is answered;
    status and byte counts are set before the bytes go out, so once a client has its
    response the entry is final (``status == 0`` only while a request is in flight).
    """

    def __init__(self, maxlen: int | None = None):
        # maxlen bounds a long-running standalone hub; tests keep everything.
        self._entries: deque[LogEntry] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.echo = None  # a stream to print each entry to (standalone --log)

    def add(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def finish(self, entry: LogEntry) -> None:
        """Called when the handler is done with ``entry`` (echoes it, for --log)."""
        if self.echo is not None:
            print(entry, file=self.echo, flush=True)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def entries(self) -> list[LogEntry]:
        with self._lock:
            return list(self._entries)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def lines(self) -> list[str]:
        return [str(e) for e in self.entries]

    def downloads(self, repo_id: str | None = None) -> list[LogEntry]:
        """File GETs that sent body bytes."""
        return [e for e in self.entries if e.file is not None and e.method == "GET" and e.bytes_sent > 0
                and (repo_id is None or e.repo_id == repo_id)]

    def fetched_files(self, repo_id: str | None = None) -> set[str]:
        """Repo-relative paths of files whose bytes were sent (optionally of one repo)."""
        return {e.file for e in self.downloads(repo_id)}

    def bytes_by_file(self) -> dict[tuple[str, str], int]:
        """{(repo_id, path): body bytes sent}, summed over requests."""
        out: dict[tuple[str, str], int] = {}
        for e in self.downloads():
            out[(e.repo_id, e.file)] = out.get((e.repo_id, e.file), 0) + e.bytes_sent
        return out

    def bytes_served(self, repo_id: str | None = None) -> int:
        """Total body bytes of file downloads -- 0 means "nothing was downloaded"."""
        return sum(e.bytes_sent for e in self.downloads(repo_id))

    def select(self, method: str | None = None, path_glob: str | None = None,
               status: int | None = None) -> list[LogEntry]:
        return [e for e in self.entries if (method is None or e.method == method)
                and (path_glob is None or fnmatch.fnmatchcase(e.path, path_glob))
                and (status is None or e.status == status)]
