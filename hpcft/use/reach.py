"""``hpcft serve`` on the login side: where the demo runs and how to reach it from a laptop.

The app itself is :mod:`hpcft.worker.serve` (gradio is imported there only), started as a
subprocess here or as a one-task Slurm job with ``--submit`` (:mod:`hpcft.use.launch`).
"""

from __future__ import annotations

import getpass
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..cluster import slurm
from ..core.atomic import read_json
from ..core.errors import HpcftError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def how_to_reach(node: Optional[str], host: str, port: int, local_port: int = 7860) -> list[str]:
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
            f"then open          http://127.0.0.1:{local_port}/",
            "SCOW: the portal's web shell cannot forward ports; run the ssh line in a terminal on your "
            "laptop with the login node's address and your cluster account (the one the portal's shell uses)"]


def answers(url: str, timeout_s: float = 5.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as r:
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


def wait_for_serve(info_path: Path, job_id: str, log: Path, err: Path, timeout_s: float) -> Served:
    """Until the job's app has written serve.json (it does so once it answers itself); then ask
    it from here too when the node's address is reachable. Fails with the log's tail if the job
    ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_json(info_path) or {}
        if str(info.get("job_id")) == str(job_id):
            node, host, port = info["node"], info["host"], int(info["port"])
            probe = "127.0.0.1" if (host in LOOPBACK or host in ("0.0.0.0", "")) and node == socket.gethostname() \
                else (node if host in ("0.0.0.0", "") else host)
            reach = host not in LOOPBACK or node == socket.gethostname()
            ok = answers(f"http://{probe}:{port}/") if reach else False
            return Served(node, host, port, int(info["pid"]), info.get("url", ""), ok)
        state = slurm.job_info(job_id)
        if state is not None and state.terminal:
            tail = err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:] if err.is_file() else []
            raise HpcftError(f"serve job {job_id} ended {state.state} before the app answered (log {err}): "
                             + " | ".join(tail))
        time.sleep(0.5)
    raise HpcftError(f"serve job {job_id}: no answer within {timeout_s:.0f} s (still queued? see {log}); "
                     f"cancel it with: scancel {job_id}")
