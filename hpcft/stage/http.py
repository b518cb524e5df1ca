"""hpcft's own small HTTP downloader (stdlib only), used for both hub protocols.

Why not the clients' own download functions (huggingface_hub.hf_hub_download,
modelscope's snapshot_download)?

* huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET`` once, at import;
  ``--source auto`` needs several endpoints in one process and library users may have
  imported huggingface_hub already. Here the endpoint is a plain argument.
* ModelScope's client does not resume an interrupted file (modelscope#1518) and
  ``from modelscope import ...`` imports torch.
* The cache contract needs one behaviour for both protocols: partial files in the cache's
  own ``tmp/`` (same filesystem, resumable by the next run, invisible until renamed),
  sha256 computed while streaming and checked against the listing, retries with backoff
  on 5xx and dropped connections (resuming with ``Range``), a hard time bound when an
  endpoint is unreachable, several files in parallel, and progress we can print.

The wire protocols are the clients' (listing APIs and ``resolve``/``FilePath`` URLs, see
``sources.py``); the tests run the real transformers/datasets/evaluate on the result.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

from .. import __version__

USER_AGENT = f"hpcft/{__version__}"
CHUNK = 1 << 20


class Unreachable(Exception):
    """The endpoint did not answer (refused, DNS, timeout)."""


class HTTPFailure(Exception):
    def __init__(self, status: int, url: str, headers=None, body: bytes = b""):
        self.status, self.url, self.headers, self.body = status, url, headers or {}, body
        super().__init__(f"HTTP {status} for {url}")

    @property
    def transient(self) -> bool:
        return self.status >= 500 or self.status in (408, 429)

    def error_code(self) -> str:
        code = self.headers.get("X-Error-Code") if self.headers else None
        return code or ""

    def message(self) -> str:
        msg = (self.headers.get("X-Error-Message") if self.headers else None) or ""
        if not msg and self.body:
            try:
                data = json.loads(self.body)
                msg = data.get("error") or data.get("Message") or data.get("msg") or ""
            except (ValueError, AttributeError):
                msg = self.body[:200].decode("utf-8", "replace")
        return str(msg)


class Interrupted(Exception):
    """Another worker failed or the user pressed Ctrl-C: stop at the next chunk."""


class VerifyError(Exception):
    pass


@dataclass
class Policy:
    timeout_s: float = 30.0         # per read of a download
    retries: int = 5
    meta_timeout_s: float = 30.0    # all attempts at one listing request together
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_json_bytes: int = 8 << 20   # one listing answer; a mirror that sends more is refused
    min_speed: float = 10_000.0     # bytes/s: a download request gets timeout_s + size / min_speed in all

    def delay(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * (2 ** attempt)) * (0.8 + 0.4 * random.random())


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http/https only; credentials go along only to the same scheme, host and
    port (as ``requests`` does). urllib would follow ``ftp://`` and keep every plain header."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if new.scheme not in ("http", "https"):
            raise HTTPFailure(code, req.full_url, {"X-Error-Message": f"redirect to a {new.scheme or 'relative'}:"
                                                  f" URL refused ({newurl[:80]})"})
        out = super().redirect_request(req, fp, code, msg, headers, newurl)
        if out is None:
            return None
        old = urllib.parse.urlsplit(req.full_url)
        auth = getattr(req, "hpcft_auth", None)
        for name in list(out.headers):
            if name.lower() in ("authorization", "cookie", "proxy-authorization"):
                del out.headers[name]
        if auth and (old.scheme, old.hostname, old.port) == (new.scheme, new.hostname, new.port):
            out.add_unredirected_header("Authorization", auth)
            out.hpcft_auth = auth
        return out


_OPENER = urllib.request.build_opener(_SafeRedirect)


# endpoint prefix -> access token (gated HF repos). Sent only to URLs under that endpoint and
# along a redirect only to the same host (an LFS redirect goes to a CDN).
_TOKENS: dict[str, str] = {}


def set_token(endpoint: str, token: Optional[str]) -> None:
    prefix = endpoint.rstrip("/") + "/"
    if token:
        _TOKENS[prefix] = token
    else:
        _TOKENS.pop(prefix, None)


def _request(url: str, *, headers: Optional[dict] = None, timeout: float, method: str = "GET"):
    plain = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
    auth = next((v for k, v in (headers or {}).items() if k.lower() == "authorization"), None)
    req = urllib.request.Request(url, method=method, headers={
        "User-Agent": USER_AGENT, "Accept-Encoding": "identity", **plain})
    for prefix, token in _TOKENS.items():
        if url.startswith(prefix):
            auth = f"Bearer {token}"
            break
    if auth:  # never a plain header: urllib copies those to any redirect target
        req.add_unredirected_header("Authorization", auth)
        req.hpcft_auth = auth
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        body = b""
        try:
            body = exc.read(4096)
        except (OSError, http.client.HTTPException):
            pass
        raise HTTPFailure(exc.code, url, exc.headers, body) from None
    except urllib.error.URLError as exc:
        raise Unreachable(_reason(exc.reason)) from None
    except (socket.timeout, TimeoutError):
        raise Unreachable(f"no answer within {timeout:.0f} s") from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise Unreachable(str(exc) or type(exc).__name__) from None


def _reason(reason) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"name not resolved ({reason.strerror})"
    return getattr(reason, "strerror", None) or str(reason)


class BadAnswer(HTTPFailure):
    """A 200 answer that is not what a hub sends: too large, not JSON."""

    def __init__(self, url: str, message: str):
        super().__init__(200, url, {"X-Error-Message": message})


class TooLarge(Exception):
    pass


def _read_bounded(resp, limit: int, deadline: float, url: str) -> bytes:
    """The whole body, refused past ``limit`` bytes or past ``deadline`` (a listing that drips one
    byte a second passes every socket timeout; this bounds the whole answer)."""
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge(f"the answer is {int(length)} bytes, more than the {limit} allowed for a listing "
                       "(sources.max_listing_mb)")
    chunks, got = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unreachable("the answer did not finish within the time allowed (sources.timeout_s)")
        _set_timeout(resp, min(left, 30.0))
        chunk = resp.read1(65536)
        if not chunk:
            return b"".join(chunks)
        got += len(chunk)
        if got > limit:
            raise TooLarge(f"the answer is larger than the {limit} bytes allowed for a listing "
                           "(sources.max_listing_mb)")
        chunks.append(chunk)


def _set_timeout(resp, seconds: float) -> None:
    sock = getattr(getattr(resp, "fp", None), "raw", None)
    sock = getattr(sock, "_sock", None)
    if sock is not None:
        sock.settimeout(max(0.1, seconds))


def get_json(url: str, policy: Policy, headers: Optional[dict] = None) -> tuple[object, dict]:
    """GET a JSON document; retries transient failures, all within ``policy.meta_timeout_s``, and
    at most ``policy.max_json_bytes`` long.

    ``headers`` (e.g. an Authorization token) are sent and never logged or stored."""
    deadline = time.monotonic() + policy.meta_timeout_s
    attempt = 0
    while True:
        left = deadline - time.monotonic()
        try:
            with _request(url, headers=headers, timeout=max(1.0, left)) as resp:
                body = _read_bounded(resp, policy.max_json_bytes, deadline, url)
                answer_headers = dict(resp.headers)
            return json.loads(body), answer_headers
        except TooLarge as exc:
            raise BadAnswer(url, str(exc)) from None
        except (Unreachable, HTTPFailure) as exc:
            transient = isinstance(exc, Unreachable) or exc.transient
            limit = min(2, policy.retries) if isinstance(exc, Unreachable) else policy.retries
            pause = policy.delay(attempt)
            if not transient or attempt >= limit or time.monotonic() + pause >= deadline:
                raise
            time.sleep(pause)
            attempt += 1
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        except (ValueError, RecursionError):
            raise BadAnswer(url, "the answer is not JSON") from None


def git_blob_sha1_prefix(size: int) -> "hashlib._Hash":
    h = hashlib.sha1()
    h.update(b"blob %d\0" % size)
    return h


def download(url: str, part, *, size: int, sha256: Optional[str], git_oid: Optional[str],
             policy: Policy, on_bytes: Callable[[int], None], stop: threading.Event,
             headers: Optional[dict] = None) -> str:
    """Fetch ``url`` into ``part`` (a :class:`hpcft.stage.layout.PartFile`, resuming what is there);
    verify; return the sha256. A file with neither hash is the caller's decision (``--allow-unverified``).

    Transient failures (5xx, dropped connection, timeout) retry with backoff and resume
    with ``Range``; a hash mismatch discards the file and retries once. Each request has an overall
    deadline (``timeout_s`` + what is left / ``min_speed``): a server that trickles bytes forever
    is cut off like one that stops.
    """
    attempt = 0
    mismatches = 0
    while True:
        if stop.is_set():
            raise Interrupted()
        have = part.size()
        if have > size:
            part.remove()
            have = 0
        h256 = hashlib.sha256()
        h1 = git_blob_sha1_prefix(size) if (git_oid and not sha256) else None
        if have:
            with part.open_read() as fh:  # seed the hashes with what an earlier run fetched
                while chunk := fh.read(CHUNK):
                    h256.update(chunk)
                    if h1:
                        h1.update(chunk)
            on_bytes(have)
        try:
            if have < size:
                _fetch(url, part, have, size, h256, h1, policy, on_bytes, stop, headers)
            elif not part.exists():
                part.open_append().close()
        except (Unreachable, HTTPFailure, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise
            if isinstance(exc, HTTPFailure) and not exc.transient:
                raise
            on_bytes(-part.size())
            if attempt >= policy.retries:
                raise
            time.sleep(policy.delay(attempt))
            attempt += 1
            continue
        digest = h256.hexdigest()
        ok = (digest == sha256) if sha256 else (h1.hexdigest() == git_oid if h1 else True)
        if ok:
            return digest
        on_bytes(-size)
        part.remove()
        mismatches += 1
        if mismatches >= 2:
            want = sha256 or f"git {git_oid}"
            raise VerifyError(f"checksum mismatch twice: expected {want}, got sha256 {digest}")


def _fetch(url, part, have: int, size: int, h256, h1, policy: Policy, on_bytes, stop,
           extra_headers: Optional[dict] = None) -> None:
    headers = {**(extra_headers or {}), **({"Range": f"bytes={have}-"} if have else {})}
    deadline = time.monotonic() + policy.timeout_s + (size - have) / max(1.0, policy.min_speed)
    resp = _request(url, headers=headers, timeout=policy.timeout_s)
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start over
            part.remove()
            on_bytes(-have)
            raise _Restart()
        # Straight from the response's buffered socket into one reused buffer, then to the
        # file and the hash: no per-chunk allocation. readinto1 returns whatever has arrived
        # (one socket read), so slow links still report progress, honour Ctrl-C and leave a
        # resumable partial file. Hashing inline beat a hashing thread on 2 cores (measured).
        fp = resp.fp
        view = memoryview(bytearray(CHUNK))
        with part.open_append() as out:
            got = have
            while got < size:
                if stop.is_set():
                    raise Interrupted()
                if time.monotonic() > deadline:
                    raise Unreachable(f"slower than {policy.min_speed / 1000:.0f} KB/s on average "
                                      "(sources.min_speed_kbs)")
                k = fp.readinto1(view[:min(CHUNK, size - got)])
                if not k:
                    raise http.client.IncompleteRead(b"", size - got)
                chunk = view[:k]
                out.write(chunk)
                h256.update(chunk)
                if h1:
                    h1.update(chunk)
                got += k
                on_bytes(k)


class _Restart(http.client.HTTPException):
    """Treated as a transient failure: the retry starts from byte 0."""
