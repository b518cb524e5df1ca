"""``hpcft tensorboard``: TensorBoard over runs' event files, behind a password. Started by the
CLI here or as a Slurm job with ``--submit`` (the login side never imports this module)::

    python -m hpcft.worker.serving.tensorboard --logdir-spec NAME:DIR[,NAME:DIR...] --info-file FILE
                                       [--host 127.0.0.1] [--port N] [--proxy-prefix P]

TensorBoard has no authentication of its own, and a port the SCOW portal proxies is open to
every portal user (the node's loopback, to every user of the node), so TensorBoard never gets a
port: its WSGI app runs inside this process, behind a password gate, and the gate's port is the
process's only listening socket (issue 26). A request goes through when it carries the password
as HTTP Basic auth (any user name), or the session cookie that ``POST /hpcft-login`` (form field
``password``; SCOW's "connect" button) or ``GET /hpcft-login?password=...`` sets; anything else
gets 401 with a Basic challenge, so a browser asks for it, and its body is never read. Only a
login form's body is read before the password is known, and at most ``LOGIN_BODY_MAX`` bytes; every
connection runs under :class:`~hpcft.worker.serving.shared.GuardedHandler`'s deadlines. The password is
made here (or taken from ``--password-env``, SCOW's ``PASSWORD``) and written only to the 0600
info file.
"""

from __future__ import annotations

import argparse
import base64
import io
import mimetypes
import os
import secrets
import sys
import threading
import urllib.parse
from pathlib import Path

from hpcft.worker.serving.shared import (
    BODY_MAX,
    LOGIN_BODY_MAX,
    GuardedHandler,
    GuardedServer,
    InfoFile,
    free_port,
    local_url,
    make_secret,
    on_stop,
    proxy_path,
)

COOKIE = "hpcft-tb"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "authorization", "cookie", "host"}  # and the password's headers


class Gate:
    """The password and the session tokens handed out for it. The cookie is scoped to the portal's
    proxy path of this server (``cookie_path``), so the browser never sends it to another user's
    app under the same portal."""

    def __init__(self, password: str, cookie_name: str = COOKIE, cookie_path: str = "/"):
        self.password = password.encode()
        self.cookie_name, self.cookie_path = cookie_name, cookie_path
        self.sessions: set[str] = set()
        self.lock = threading.Lock()

    def valid_password(self, given: str) -> bool:
        return secrets.compare_digest(given.encode(), self.password)

    def new_session(self) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.sessions.add(token)
        return token

    def allows(self, headers) -> bool:
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                _, _, pw = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return self.valid_password(pw)
        for part in headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie_name and value:
                with self.lock:
                    return value in self.sessions
        return False


def make_handler(gate: Gate, app):
    """The front: the login, the password check, then TensorBoard's WSGI ``app`` in this process."""

    class Front(GuardedHandler):
        def _login(self) -> None:
            path, _, query = self.path.partition("?")
            if self.command == "POST":
                body = self.read_body(LOGIN_BODY_MAX)  # the only body read before the password is known
                if body is None:
                    return
                query = body.decode("utf-8", "replace")
            if not gate.valid_password(urllib.parse.parse_qs(query).get("password", [""])[0]):
                self.answer(401, "wrong password\n")
                return
            self.send_response(303)
            self.send_header("Location", "./")  # relative: stays under the portal's proxy path
            self.send_header("Set-Cookie", f"{gate.cookie_name}={gate.new_session()}; Path={gate.cookie_path}; "
                                           "HttpOnly; SameSite=Lax")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _handle(self) -> None:
            path = self.path.partition("?")[0]
            if path.rstrip("/").endswith("/hpcft-login") or path == "/hpcft-login":
                self._login()
                return
            if not gate.allows(self.headers):
                self.answer(401, "TensorBoard (hpcft): the password is in the server's info file (0600)\n",
                            {"WWW-Authenticate": 'Basic realm="hpcft tensorboard", charset="UTF-8"'})
                return
            body = self.read_body(BODY_MAX)
            if body is None:
                return
            try:
                status, headers, data = call_wsgi(app, wsgi_environ(self, body))
            except Exception as exc:  # a plugin's bug: this request fails, the board goes on
                print(f"hpcft: TensorBoard failed on {path}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                self.answer(500, f"TensorBoard failed: {type(exc).__name__}\n")
                return
            code, _, reason = status.partition(" ")
            self.send_response(int(code), reason)
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _handle

    return Front


def wsgi_environ(h: GuardedHandler, body: bytes) -> dict:
    """PEP 3333's environ for the request ``h`` has read (with its body); the password's headers
    (Authorization, Cookie) stay here."""
    path, _, query = h.path.partition("?")
    host, port = h.server.server_address[:2]
    env = {"REQUEST_METHOD": h.command, "SCRIPT_NAME": "", "PATH_INFO": urllib.parse.unquote(path, "latin-1"),
           "QUERY_STRING": query, "CONTENT_TYPE": h.headers.get("Content-Type", ""),
           "CONTENT_LENGTH": str(len(body)) if body else "", "SERVER_NAME": str(host), "SERVER_PORT": str(port),
           "SERVER_PROTOCOL": h.request_version, "REMOTE_ADDR": h.client_address[0],
           "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
           "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False}
    for name, value in h.headers.items():
        if "_" in name or name.lower() in HOP_BY_HOP - {"host"} or name.lower() in ("content-type", "content-length"):
            continue  # (a header with '_' could pose as another one in the environ)
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def call_wsgi(app, environ: dict) -> tuple[str, list, bytes]:
    """(status, headers, body) of one call of the WSGI ``app``."""
    got: dict = {}
    parts: list[bytes] = []

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = status, headers
        return parts.append

    result = app(environ, start_response)
    try:
        parts.extend(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return got["status"], got["headers"], b"".join(parts)


def board_app(logdir_spec: str, reload_interval: int = 15):
    """TensorBoard's own WSGI app (its standard plugins and web assets) over ``logdir_spec``, in
    this process: the event files are read by a reloader thread here, never by TensorBoard's
    data server (a subprocess with a port of its own)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tensorboard import default, program
    from tensorboard.backend import application
    from tensorboard.backend.event_processing.data_ingester import LocalDataIngester

    for mime, ext in (("text/javascript", ".js"), ("font/woff2", ".woff2"), ("text/html", ".html")):
        mimetypes.add_type(mime, ext)  # what TensorBoard's own main() fixes in the registry
    tb = program.TensorBoard(plugins=default.get_plugins())
    tb.configure(logdir_spec=logdir_spec, reload_interval=reload_interval, reload_task="thread", load_fast="false")
    ingester = LocalDataIngester(tb.flags)
    ingester.start()
    return application.TensorBoardWSGIApp(tb.flags, tb.plugin_loaders, ingester.data_provider,
                                          tb.assets_zip_provider, ingester.deprecated_multiplexer)


def serve_board(app, gate: Gate, host: str, port: int) -> tuple[GuardedServer, threading.Thread]:
    """The front on ``host:port`` (OSError when it is taken), listening, served by a thread."""
    front = GuardedServer((host, port), make_handler(gate, app))
    serving = threading.Thread(target=front.serve_forever, name="hpcft-tb-front", daemon=True)
    serving.start()
    return front, serving


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.serving.tensorboard")
    p.add_argument("--logdir-spec", required=True, help="NAME:DIR,... (TensorBoard's --logdir_spec)")
    p.add_argument("--info-file", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--password-env", default="", help="take the password from this variable (SCOW's PASSWORD)")
    p.add_argument("--proxy-node", default="", help="the node's name in the portal's URL (SCOW's $HOST)")
    p.add_argument("--proxy-prefix", default="")
    p.add_argument("--print-secret", action="store_true")
    a = p.parse_args(argv)
    password = (os.environ.get(a.password_env, "") if a.password_env else "") or make_secret(length=24)
    port = a.port or free_port(a.host)
    root = proxy_path(a.proxy_prefix, port, a.proxy_node)
    gate = Gate(password, f"{COOKIE}-{port}", root + "/" if root else "/")
    try:
        app = board_app(a.logdir_spec)
    except ImportError as exc:
        print(f"hpcft: error: TensorBoard did not start ({exc}); is it installed in {sys.executable}?",
              file=sys.stderr, flush=True)
        return 1
    try:  # listening only once the board is built: an open port means a ready board (the portal's "connect")
        front, serving = serve_board(app, gate, a.host, port)
    except OSError as exc:
        print(f"hpcft: error: port {port} on {a.host} is in use ({exc.strerror}); pick another --port",
              file=sys.stderr, flush=True)
        return 2
    info = InfoFile(Path(a.info_file))
    info.write(kind="tensorboard", host=a.host, port=port, url=local_url(a.host, port), user="hpcft",
               password=password, logdir_spec=a.logdir_spec, proxy_path=root + "/" if root else "")
    on_stop(info, front.shutdown, "tensorboard")
    print(f"hpcft: TensorBoard on {info.info['node']} {a.host}:{port} (pid {os.getpid()})", flush=True)
    if a.print_secret:
        print(f"hpcft: password (shown once; also in {info.path}, mode 0600): {password}", flush=True)
    while serving.is_alive():
        serving.join(1.0)
    info.remove()
    print("hpcft: error: the TensorBoard front stopped", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(run())
