"""What every hpcft server on a node shares (the Gradio demo, the OpenAI-compatible API, the
TensorBoard front): a free port, a per-server secret, the proxy path the SCOW portal uses, and
the info file the login side waits for.

The info file (``serve.json`` in the run folder, ``tensorboard.json`` in a TensorBoard folder)
holds the secret, so it is written ``0600`` and only by the server itself, once it answers; the
login side reads it, prints the secret once to its owner, and never writes it anywhere else. It
is removed when the server stops (only by the process that wrote it).

Every user of a login node shares its loopback, so each server also defends itself against the
other users' clients (issue 26): a connection must send its request line and headers within
``HEADER_S`` of opening (or of the previous answer), a body within ``BODY_S``, and a body is
at most ``BODY_MAX`` bytes (``LOGIN_BODY_MAX`` for a login form); beyond that it gets 413 or is
dropped, and the server goes on serving the others. :class:`GuardedHandler` does it for the
stdlib servers (the TensorBoard front), :func:`guarded_h11` and :class:`BodyGuard` for uvicorn
(the API, and the demo under gradio).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import signal
import socket
import string
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

from hpcft.core.atomic import atomic_write_json, read_json

SECRET_MODE = 0o600
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ALPHABET = string.ascii_letters + string.digits
HEADER_S = 10.0                 # request line and headers, from the connection (or the last answer)
BODY_S = 30.0                   # the body, once the headers are in
BODY_MAX = 4 * 1024 * 1024      # a request body (a prompt, a form); 413 beyond
LOGIN_BODY_MAX = 64 * 1024      # a login form's body; 413 beyond


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", 0))
        return s.getsockname()[1]


def make_secret(prefix: str = "", length: int = 32) -> str:
    """A random secret of letters and digits (what SCOW's get_password makes; safe in a URL, a
    form field and a shell word)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def proxy_path(prefix: Optional[str], port: int, node: str = "") -> str:
    """The path the portal shows the app under: ``<prefix>/<node>/<port>`` where the prefix is
    ``<portal base path>/api/proxy/<cluster>/relative`` (OpenSCOW's PROXY_BASE_PATH) and the node
    is the name the portal's URL carries (a SCOW app's ``$HOST``; by default this node's name);
    '' without a prefix."""
    if not prefix:
        return ""
    return f"{prefix.rstrip('/')}/{node or node_name()}/{port}"


def local_url(host: str, port: int, path: str = "/") -> str:
    here = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{here}:{port}{path}"


def answered(url: str, timeout_s: float = 60.0, headers: Optional[dict] = None,
             ok: tuple[int, ...] = (200,)) -> bool:
    """Poll ``url`` until it answers with one of ``ok`` (never through a proxy)."""
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
                if r.status in ok:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return True
            time.sleep(0.3)
        except OSError:
            time.sleep(0.3)
    return False


class InfoFile:
    """The server's info file: written 0600 once it answers, removed on stop by its writer only."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.info: dict = {}

    def write(self, **info) -> dict:
        self.info = {"job_id": os.environ.get("SLURM_JOB_ID"), "node": node_name(), "pid": os.getpid(),
                     "started": time.time(), **info}
        atomic_write_json(self.path, self.info, mode=SECRET_MODE)
        return self.info

    def remove(self) -> None:
        current = read_json(self.path) or {}
        if current.get("pid") == os.getpid() and current.get("node") == self.info.get("node"):
            self.path.unlink(missing_ok=True)


def on_stop(info: InfoFile, close: Callable[[], None], what: str) -> None:
    """SIGTERM (scancel) and SIGINT remove the info file, close the server and exit."""
    def stop(signum, frame):
        info.remove()
        print(f"hpcft: {what} stopped (signal {signum})", flush=True)
        close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# --------------------------------------------------------------------------- stdlib servers

class _Deadline(io.RawIOBase):
    """The socket's reads, each allowed only what is left until ``until`` (a slow client cannot
    stretch one request by trickling a byte now and then)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.until = sock, 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.until - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client sent its request too slowly")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler whose reads run under deadlines (``header_s`` for the request line and
    headers, ``body_s`` for a body) and whose bodies are read only on demand and up to a cap
    (:meth:`read_body`); a write that stalls for ``body_s`` drops the connection too. A timeout
    closes that connection only (``handle_one_request`` treats TimeoutError so)."""

    protocol_version = "HTTP/1.1"
    header_s, body_s = HEADER_S, BODY_S

    def setup(self) -> None:
        super().setup()
        plain, self._reader = self.rfile, _Deadline(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        plain.close()  # the socket's own reader: unused, and it would hold the socket open

    def handle_one_request(self) -> None:  # one per request of a kept-alive connection
        self._reader.until = time.monotonic() + self.header_s
        self._body_read = False
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.connection.settimeout(self.body_s)  # writes (and reads other than through the deadline)
        return ok

    def log_message(self, fmt, *args) -> None:  # no access log in the job's output
        return

    def has_body(self) -> bool:
        length = self.headers.get("Content-Length", "").strip()
        return bool(self.headers.get("Transfer-Encoding")) or (length != "" and length.strip("0") != "")

    def answer(self, status: int, text: str, extra: Optional[dict] = None) -> None:
        """A short text answer; the connection closes after it when the request's body is left unread."""
        body = text.encode()
        self.send_response(status)
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)), **(extra or {})}
        if self.has_body() and not self._body_read:
            headers["Connection"] = "close"
            self.close_connection = True
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self, limit: int) -> Optional[bytes]:
        """The request's body (b'' without one), read now, at most ``limit`` bytes and within
        ``body_s``; None once it has answered 411, 400 or 413 instead."""
        if self.headers.get("Transfer-Encoding"):
            self.answer(411, "send the body with a Content-Length\n")
            return None
        raw = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw.isdigit():
            self.answer(400, "bad Content-Length\n")
            return None
        if int(raw) > limit:
            self.answer(413, f"the request body is over {limit} bytes\n")
            return None
        self._reader.until = time.monotonic() + self.body_s
        data = self.rfile.read(int(raw))
        if len(data) < int(raw):
            raise TimeoutError("the client closed before its body was in")
        self._body_read = True
        self.connection.settimeout(self.body_s)  # the answer's writes get their own time, not what is left
        return data


class GuardedServer(ThreadingHTTPServer):
    """One thread per connection (daemon threads), each under :class:`GuardedHandler`'s deadlines;
    a backlog for a burst of connections (socketserver's 5 makes the 6th client wait seconds)."""

    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away or stalled: nothing to report
            return
        print(f"hpcft: a request from {client_address[0]} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- uvicorn servers

def guarded_h11(header_s: float = HEADER_S):
    """uvicorn's h11 protocol, but a connection that has not sent a request's headers within
    ``header_s`` of opening (or of its last answer) is closed: uvicorn itself waits for them
    without end. Pass it as ``uvicorn.Config(http=...)``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._hpcft_arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._hpcft_arm()

        def _hpcft_arm(self) -> None:
            self.loop.call_later(header_s, self._hpcft_check, self.cycle)

        def _hpcft_check(self, cycle) -> None:
            idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
            if idle and not self.transport.is_closing():  # no new request got its headers in
                self.transport.close()

    return GuardedH11


def __getattr__(name: str):
    """``GuardedH11Protocol``: the class of :func:`guarded_h11`, for uvicorn's protocol registry
    (``module:attr`` strings; uvicorn is imported only when it is asked for)."""
    if name == "GuardedH11Protocol":
        return guarded_h11()
    raise AttributeError(name)


def _login_path(path: str) -> bool:
    return path.rstrip("/").endswith("login")


class BodyGuard:
    """ASGI middleware: a request's body is read here, before the app sees it, at most
    ``limit`` bytes (``login_limit`` on a path ending in ``login``) and within ``body_s``;
    413 or 408 (JSON ``{"error": {...}}``) otherwise. Put it inside the authentication (the API)
    so that a body is read only after the key was checked."""

    def __init__(self, app, limit: int = BODY_MAX, login_limit: int = LOGIN_BODY_MAX, body_s: float = BODY_S):
        self.app, self.limit, self.login_limit, self.body_s = app, limit, login_limit, body_s

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        if scope["type"] != "http" or not (b"content-length" in headers or b"transfer-encoding" in headers):
            return await self.app(scope, receive, send)
        limit = self.login_limit if _login_path(scope.get("path", "")) else self.limit
        declared = headers.get(b"content-length", b"").strip()
        if declared and not declared.isdigit():
            return await _json_error(send, 400, "bad Content-Length")
        if declared and int(declared) > limit:
            return await _json_error(send, 413, f"the request body is over {limit} bytes")
        try:
            body = await asyncio.wait_for(self._read(receive, limit), self.body_s)
        except asyncio.TimeoutError:
            return await _json_error(send, 408, f"the request body did not arrive within {self.body_s:g} s")
        except _Gone:
            return None  # the client left before its body was in: nobody to answer
        if body is None:
            return await _json_error(send, 413, f"the request body is over {limit} bytes")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()   # after the body: the client's disconnect, for a stream
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    @staticmethod
    async def _read(receive, limit: int) -> Optional[bytes]:
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                return None
            if not message.get("more_body"):
                break
        return b"".join(parts)


class _Gone(Exception):
    """The client disconnected while its body was read."""


async def _json_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": None}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
