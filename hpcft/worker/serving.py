"""What every hpcft server on a node shares (the Gradio demo, the OpenAI-compatible API, the
TensorBoard front): a free port, a per-server secret, the proxy path the SCOW portal uses, and
the info file the login side waits for.

The info file (``serve.json`` in the run folder, ``tensorboard.json`` in a TensorBoard folder)
holds the secret, so it is written ``0600`` and only by the server itself, once it answers; the
login side reads it, prints the secret once to its owner, and never writes it anywhere else. It
is removed when the server stops (only by the process that wrote it).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import string
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ..core.atomic import atomic_write_json, read_json

SECRET_MODE = 0o600
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ALPHABET = string.ascii_letters + string.digits


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
