"""``hpcft serve`` and ``hpcft tensorboard`` on the login side: where a server runs and how to
reach it: an ``ssh -L`` line from a laptop, or, with ``scow: {portal_url, cluster}`` in the
cluster config, the SCOW portal's proxy URL (OpenSCOW ``apps/portal-web/src/server/setup/proxy.ts``:
``<portal>/api/proxy/<cluster>/<relative|absolute>/<node>/<port>/<path>``; a ``relative`` proxy
hands the app only ``/<path>``).

The apps themselves are :mod:`hpcft.worker.serving.demo`, :mod:`hpcft.worker.serving.api_server` and
:mod:`hpcft.worker.serving.tensorboard`, started as a subprocess here or as a one-task Slurm job with
``--submit`` (:mod:`hpcft.use.launch`). Each writes its info file (0600, with its secret) once it
answers; :func:`wait_for_serve` waits for it.
"""

from __future__ import annotations

import base64
import getpass
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..cluster import slurm
from ..core.atomic import read_json
from ..core.config import Scow
from ..core.errors import ConfigError, HpcftError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
EVERYWHERE = "0.0.0.0"


def portal(scow: Scow) -> bool:
    """Whether the portal's proxy is configured (both its URL and this cluster's id)."""
    return bool(scow.portal_url and scow.cluster and scow.enabled is not False)


def proxy_prefix(scow: Scow) -> str:
    """The path up to the node, as OpenSCOW's PROXY_BASE_PATH: ``<base path>/api/proxy/<cluster>/relative``
    (the app, told this plus ``/<node>/<port>``, writes its links under it)."""
    base = urllib.parse.urlsplit(scow.portal_url or "").path.rstrip("/")
    return f"{base}/api/proxy/{scow.cluster}/relative"


def proxy_url(scow: Scow, node: str, port: int, path: str = "") -> str:
    """The portal URL of ``path`` on ``node:port``: ``<portal>/api/proxy/<cluster>/relative/<node>/<port>/<path>``."""
    parts = urllib.parse.urlsplit(scow.portal_url or "")
    return f"{parts.scheme}://{parts.netloc}{proxy_prefix(scow)}/{node}/{port}/{path.lstrip('/')}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "USER"


def login_host() -> str:
    """This (login) node's name as a laptop would address it; a resolver that only knows
    'localhost' gives the plain hostname instead."""
    fqdn = socket.getfqdn()
    return fqdn if fqdn and not fqdn.startswith("localhost") else socket.gethostname()


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` here (a closed connection's TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def how_to_reach(node: Optional[str], host: str, port: int, local_port: int = 7860, path: str = "") -> list[str]:
    """What to run on a laptop to open the demo: an ssh tunnel through the login node, and the
    SCOW note (its web shell cannot forward ports)."""
    user, login = _user(), login_host()
    here = node is None or node in (socket.gethostname(), login)
    target_host = "127.0.0.1" if host in LOOPBACK or host in ("0.0.0.0", "") else host
    if here:
        tunnel = f"ssh -N -L {local_port}:{target_host}:{port} {user}@{login}"
    elif host in LOOPBACK:  # bound to the node's loopback: hop through the login node to the node
        tunnel = f"ssh -N -L {local_port}:127.0.0.1:{port} -J {user}@{login} {user}@{node}"
    else:
        tunnel = f"ssh -N -L {local_port}:{node}:{port} {user}@{login}"
    return [f"from your laptop:  {tunnel}",
            (f"then use base_url http://127.0.0.1:{local_port}/{path}" if path == "v1" else
             f"then open          http://127.0.0.1:{local_port}/{path}"),
            "SCOW: the portal's web shell cannot forward ports; run the ssh line in a terminal on your "
            "laptop with the login node's address and your cluster account (the one the portal's shell uses)"]


SCOW_APP_VARS = ("PORT", "PASSWORD")


def scow_app_args(command: str, environ: dict) -> list[str]:
    """Worker arguments inside a SCOW interactive app (contrib/scow/apps/): the port and password its
    beforeScript exported, bound on every address, links under the portal's proxy path
    (``PROXY_BASE_PATH``, ``HOST``: what OpenSCOW's portal-server and server_entry.sh export)."""
    missing = [v for v in SCOW_APP_VARS if not environ.get(v)]
    if missing:
        raise ConfigError([f"hpcft {command} --scow-app: ${' and $'.join(missing)} not set; --scow-app runs inside "
                           "a SCOW interactive app whose beforeScript exports PORT and PASSWORD (contrib/scow/apps/)"])
    if not environ["PORT"].isdigit():
        raise ConfigError([f"hpcft {command} --scow-app: $PORT is {environ['PORT']!r}, not a port number"])
    args = ["--host", EVERYWHERE, "--port", environ["PORT"], "--password-env", "PASSWORD"]
    if environ.get("PROXY_BASE_PATH"):
        args += ["--proxy-prefix", environ["PROXY_BASE_PATH"], "--proxy-node", environ.get("HOST", "")]
    return args


def through_portal(scow: Scow, node: str, port: int, path: str = "") -> list[str]:
    """What to open instead of an ssh tunnel when the portal proxies the port."""
    return [f"through the SCOW portal (logged in): {proxy_url(scow, node, port, path)}",
            "any portal user can reach a proxied port: the server asks for its secret (below, shown once)"]


def basic_auth(info: dict) -> dict:
    """The Authorization header that a password-protected server (tensorboard) accepts."""
    token = base64.b64encode(f"hpcft:{info.get('password', '')}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(info: dict) -> dict:
    return {"Authorization": f"Bearer {info.get('api_key', '')}"}


def answers(url: str, timeout_s: float = 5.0, headers: Optional[dict] = None) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Served:
    node: str
    host: str
    port: int
    pid: int
    url: str
    answered_here: bool
    info: Optional[dict] = None           # the server's info file (its secret included)


def wait_for_serve(info_path: Path, job_id: str, log: Path, err: Path, timeout_s: float,
                   probe: str = "/", headers: Optional[Callable[[dict], dict]] = None) -> Served:
    """Until the job's app has written serve.json (it does so once it answers itself); then ask
    it from here too when the node's address is reachable. Fails with the log's tail if the job
    ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_json(info_path) or {}
        if str(info.get("job_id")) == str(job_id):
            node, host, port = info["node"], info["host"], int(info["port"])
            where = "127.0.0.1" if (host in LOOPBACK or host in ("0.0.0.0", "")) and node == socket.gethostname() \
                else (node if host in ("0.0.0.0", "") else host)
            reach = host not in LOOPBACK or node == socket.gethostname()
            ok = answers(f"http://{where}:{port}{probe}", headers=headers(info) if headers else None) \
                if reach else False
            return Served(node, host, port, int(info["pid"]), info.get("url", ""), ok, info)
        state = slurm.job_info(job_id)
        if state is not None and state.terminal:
            tail = err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-40:] if err.is_file() else []
            said = [ln.split("hpcft: error: ", 1)[1] for ln in tail if ln.startswith("hpcft: error: ")]
            raise HpcftError(f"serve job {job_id} ended {state.state} before the app answered: "
                             + (said[-1] if said else " | ".join(tail[-5:])) + f" (log {err})")
        time.sleep(0.5)
    raise HpcftError(f"serve job {job_id}: no answer within {timeout_s:.0f} s (still queued? see {log}); "
                     f"cancel it with: scancel {job_id}")


LAPTOP_PORTS = {"api": 8000, "demo": 7860, "tensorboard": 6006}   # the ssh -L line's local port, by kind
SECRET_NAMES = {"api": ("API key", "api_key"), "demo": ("password (user hpcft)", "password"),
                "tensorboard": ("password (any user name)", "password")}


def print_served(served: Served, scow: Scow, info_path: Path, job_id: str) -> None:
    """Where a submitted server answers, how to reach it (the portal's proxy URL when one is
    configured and the server listens beyond the node's loopback, else the ssh line), and its
    secret, printed this once (it stays only in the 0600 info file)."""
    info = served.info or {}
    kind = info.get("kind", "demo")
    path = "v1" if kind == "api" else ""
    seen = "answers here" if served.answered_here else "answered on its node"
    print(f"serving on node {served.node} port {served.port} (pid {served.pid}; the app {seen})")
    print(f"  {info_path} (mode 0600: it holds the secret)")
    if portal(scow) and served.host not in LOOPBACK:
        lines = through_portal(scow, served.node, served.port, path)
        if kind != "demo":  # the demo writes its links under the portal's path: only the portal URL works
            lines.append(f"on the cluster:     http://{served.node}:{served.port}/{path}")
    else:
        lines = how_to_reach(served.node, served.host, served.port, LAPTOP_PORTS.get(kind, 7860), path)
    for line in lines:
        print(f"  {line}")
    label, key = SECRET_NAMES.get(kind, ("secret", "password"))
    if info.get(key):
        print(f"  {label}, shown this once: {info[key]}")
    print(f"  stop it with: scancel {job_id}")
