"""``hpcft tensorboard``: TensorBoard over runs' event files, behind a password. Started by the
CLI here or as a Slurm job with ``--submit`` (the login side never imports this module)::

    python -m hpcft.worker.tensorboard --logdir-spec NAME:DIR[,NAME:DIR...] --info-file FILE
                                       [--host 127.0.0.1] [--port N] [--proxy-prefix P]

TensorBoard has no authentication of its own, and a port the SCOW portal proxies is open to
every portal user, so TensorBoard listens on the node's loopback only and this small reverse
proxy faces the network. It lets a request through when it carries the password as HTTP Basic
auth (any user name), or the session cookie that ``POST /hpcft-login`` (form field
``password``; SCOW's "connect" button) or ``GET /hpcft-login?password=...`` sets; anything else
gets 401 with a Basic challenge, so a browser asks for it. The password is made here (or taken
from ``--password-env``, SCOW's ``PASSWORD``) and written only to the 0600 info file.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import secrets
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .serving import InfoFile, answered, free_port, local_url, make_secret, on_stop, proxy_path

COOKIE = "hpcft-tb"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "authorization", "cookie", "host"}


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


def make_handler(gate: Gate, upstream_port: int):
    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # no access log in the job's output
            return

        def _plain(self, status: int, text: str, extra: dict | None = None) -> None:
            body = text.encode()
            self.send_response(status)
            for k, v in {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)),
                         **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _login(self, password: str) -> None:
            if not gate.valid_password(password):
                self._plain(401, "wrong password\n")
                return
            self.send_response(303)
            self.send_header("Location", "./")  # relative: stays under the portal's proxy path
            self.send_header("Set-Cookie", f"{gate.cookie_name}={gate.new_session()}; Path={gate.cookie_path}; "
                                           "HttpOnly; SameSite=Lax")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def _handle(self) -> None:
            path, _, query = self.path.partition("?")
            if path.rstrip("/").endswith("/hpcft-login") or path == "/hpcft-login":
                form = self._body().decode("utf-8", "replace") if self.command == "POST" else query
                self._login(urllib.parse.parse_qs(form).get("password", [""])[0])
                return
            if not gate.allows(self.headers):
                self._plain(401, "TensorBoard (hpcft): the password is in the server's info file (0600)\n",
                            {"WWW-Authenticate": 'Basic realm="hpcft tensorboard", charset="UTF-8"'})
                return
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except OSError as exc:
                self._plain(502, f"TensorBoard did not answer: {exc}\n")
                return
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _handle

    return Front


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.tensorboard")
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
    inner = free_port("127.0.0.1")
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir_spec", a.logdir_spec,
                           "--host", "127.0.0.1", "--port", str(inner), "--reload_interval", "15"],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=subprocess.DEVNULL)
    root = proxy_path(a.proxy_prefix, port, a.proxy_node)
    gate = Gate(password, f"{COOKIE}-{port}", root + "/" if root else "/")
    # the port is taken now (a clash fails at once) but listens only once TensorBoard answers, so
    # an open port means a ready board (what the portal's "connect" waits for)
    front = ThreadingHTTPServer((a.host, port), make_handler(gate, inner), bind_and_activate=False)
    front.daemon_threads = True
    try:
        front.server_bind()
    except OSError as exc:
        tb.terminate()
        print(f"hpcft: error: port {port} on {a.host} is in use ({exc.strerror}); pick another --port",
              file=sys.stderr, flush=True)
        return 2
    if not answered(f"http://127.0.0.1:{inner}/", 180):
        print(f"hpcft: error: TensorBoard did not start (exit {tb.poll()}); is it installed in {sys.executable}?",
              file=sys.stderr, flush=True)
        tb.terminate()
        return 1
    front.server_activate()
    threading.Thread(target=front.serve_forever, name="hpcft-tb-front", daemon=True).start()
    info = InfoFile(Path(a.info_file))
    info.write(kind="tensorboard", host=a.host, port=port, url=local_url(a.host, port), user="hpcft",
               password=password, logdir_spec=a.logdir_spec, proxy_path=root + "/" if root else "")

    def close():
        front.shutdown()
        tb.terminate()

    on_stop(info, close, "tensorboard")
    print(f"hpcft: TensorBoard on {info.info['node']} {a.host}:{port} (pid {os.getpid()})", flush=True)
    if a.print_secret:
        print(f"hpcft: password (shown once; also in {info.path}, mode 0600): {password}", flush=True)
    code = tb.wait()
    info.remove()
    front.shutdown()
    print(f"hpcft: error: TensorBoard exited ({code})", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(run())
