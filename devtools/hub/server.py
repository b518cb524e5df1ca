"""A loopback model hub speaking the Hugging Face, ModelScope and Modelers HTTP protocols.

The real client libraries (huggingface_hub, transformers, datasets, evaluate,
modelscope / modelscope_hub, openmind_hub) talk to it as if it were huggingface.co,
modelscope.cn or modelers.cn: point ``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT`` and
``OPENMIND_HUB_ENDPOINT`` at ``.url`` (openmind_hub needs https and a modelers.cn name:
``HubServer(tls=Cert.make(dir), hostname="hub.modelers.cn")``, see ``tls.py``).
Stdlib only.  Fault knobs (5xx, dropped connections, slow bodies, missing files,
corrupted bytes), a hostile mode (``hub.hostile``, see ``hostile.py``: unsafe names, fake
commits, endless listings, redirects) and a request log let tests check retry/resume/verification,
"which files were fetched" and that a lying mirror cannot reach outside the cache.

    with HubServer() as hub:
        hub.add_repo("model", "google-bert/bert-base-uncased", folder)
        hub.faults.fail("*/model.safetensors", times=2)       # two 500s, then fine
        ...  # run a client with HF_ENDPOINT=hub.url
        assert hub.log.fetched_files() == {...}

Standalone:  python -m devtools.hub.server --port 0 --fixtures DIR   (prints READY <url>)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from .faults import Faults, LogEntry, RequestLog
from .handlers import KIND_PREFIX, Handler
from .hostile import Hostile
from .repos import Repo

__all__ = ["HubServer", "Faults", "RequestLog", "LogEntry", "Repo", "main"]

HF_ACTIONS = ("revision", "tree", "paths-info", "resolve", "refs", "parquet")


class HubServer:
    """The hub.  Thread-safe; one instance serves both protocols on one port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tree_page_size: int = 1000,
                 lfs_threshold: int = 10 * 1024 * 1024, tls=None, hostname: str | None = None):
        """``tls``: a :class:`devtools.hub.tls.Cert` (serve https, as modelers.cn does; the
        openmind_hub client refuses anything else). ``hostname``: the name ``url`` uses
        (e.g. ``hub.modelers.cn``, resolved to the loopback address by the test)."""
        self.host, self._want_port = host, port
        self.tls, self.hostname = tls, hostname
        self.tree_page_size = tree_page_size  # HF tree pages (the client follows Link: rel="next")
        self.lfs_threshold = lfs_threshold  # files this big are LFS even without .gitattributes
        self.repos: dict[tuple[str, str], Repo] = {}
        self.aliases: dict[tuple[str, str], str] = {}  # legacy name -> canonical id (redirects)
        self.gated: dict[tuple[str, str], str] = {}    # (kind, repo id) -> the token it needs (HF protocol)
        self.faults = Faults()
        self.hostile = Hostile(self)  # a mirror that lies on purpose (hostile.py); tests arm it
        self.log = RequestLog()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        if self._httpd is None:
            handler = type("BoundHandler", (Handler,), {"hub": self})
            self._httpd = _Server((self.host, self._want_port), handler)
            if self.tls is not None:
                # the handshake happens in the request's thread (first read), not in accept()
                self._httpd.socket = self.tls.server_context().wrap_socket(
                    self._httpd.socket, server_side=True, do_handshake_on_connect=False)
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                            name="hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.hostname or self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point every client at this hub."""
        return {"HF_ENDPOINT": self.url, "MODELSCOPE_ENDPOINT": self.url, "OPENMIND_HUB_ENDPOINT": self.url,
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "30",
                "HF_UPDATE_DOWNLOAD_COUNTS": "0",
                # A proxy in the environment would swallow loopback requests.
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    # ------------------------------------------------------------------ content
    def add_repo(self, kind: str, repo_id: str, folder, revisions: dict | None = None) -> Repo:
        """Serve ``folder`` as ``repo_id`` (kind: model|dataset|space).

        The default branch answers to ``main`` (HF) and ``master`` (ModelScope) and to
        its commit sha.  ``revisions`` adds more: ``{"v1.0": other_folder}`` (a
        different commit) or ``{"v1.0": None}`` (a tag on the default commit).
        """
        if kind not in KIND_PREFIX:
            raise ValueError(f"kind must be one of {sorted(KIND_PREFIX)}, not {kind!r}")
        repo = Repo(kind, repo_id, Path(folder), revisions or {}, lfs_threshold=self.lfs_threshold)
        with self._lock:
            self.repos[(kind, repo_id)] = repo
        return repo

    def add_alias(self, kind: str, alias: str, repo_id: str) -> None:
        """Redirect a legacy name (``bert-base-uncased``) to ``repo_id``, as huggingface.co does."""
        with self._lock:
            self.aliases[(kind, alias)] = repo_id

    def remove_repo(self, kind: str, repo_id: str) -> None:
        with self._lock:
            self.repos.pop((kind, repo_id), None)

    def reset(self) -> None:
        """Clear faults, hostile rules and the request log (repos stay)."""
        self.faults.clear()
        self.hostile.clear()
        self.log.clear()

    def find(self, kind: str, segments: list[str]) -> tuple[str, Repo | None, str | None, int]:
        """Split URL segments into (repo_id, repo, alias_target, n_segments_used).

        Repo ids have one or two segments (``bert-base-uncased`` vs ``google-bert/...``);
        a known repo or alias wins, else the shape of the rest of the path decides.
        """
        with self._lock:
            for n in (2, 1):
                rid = "/".join(segments[:n])
                if len(segments) >= n and (kind, rid) in self.repos:
                    return rid, self.repos[(kind, rid)], None, n
                if len(segments) >= n and (kind, rid) in self.aliases:
                    return rid, None, self.aliases[(kind, rid)], n
        n = 1 if len(segments) == 1 or segments[1] in HF_ACTIONS else 2
        return "/".join(segments[:n]), None, None, n

    def ms_repo(self, kind: str, repo_id: str) -> Repo | None:
        with self._lock:
            target = self.aliases.get((kind, repo_id), repo_id)
            return self.repos.get((kind, target))

    def add_standard_fixtures(self, fixtures_dir, *, aliases: bool = True) -> dict:
        """Create (cached in ``fixtures_dir``) and serve the standard fixture set."""
        from .fixtures import make_modelers_fixtures, make_standard_fixtures

        repos = make_standard_fixtures(fixtures_dir)
        for (kind, rid), folder in repos.items():
            self.add_repo(kind, rid, folder)
        if aliases:  # the legacy names huggingface.co still redirects
            for kind, rid in repos:
                if kind != "space":
                    self.add_alias(kind, rid.split("/", 1)[1], rid)
        om = make_modelers_fixtures(fixtures_dir)  # Modelers ids: no legacy names to redirect
        for (kind, rid), folder in om.items():
            self.add_repo(kind, rid, folder)
        return {**repos, **om}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck (slow-fault) client must not block stop()
    request_queue_size = 128  # snapshot downloads open many connections at once


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.hub.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--fixtures", default=os.environ.get("HPCFT_HUB_FIXTURES") or
                    os.path.join(tempfile.gettempdir(), "hpcft-hub-fixtures"),
                    help="directory for the generated fixture repos (reused when present)")
    ap.add_argument("--no-aliases", action="store_true", help="do not redirect legacy names")
    ap.add_argument("--log", action="store_true", help="print every request to stderr")
    args = ap.parse_args(argv)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers may import deepspeed: keep it quiet
    hub = HubServer(args.host, args.port)
    # Generating fixtures imports transformers, whose loggers may print to stdout;
    # stdout is reserved for the READY line that scripts wait for.
    with contextlib.redirect_stdout(sys.stderr):
        hub.add_standard_fixtures(args.fixtures, aliases=not args.no_aliases)
    hub.log = RequestLog(maxlen=10_000)
    if args.log:
        hub.log.echo = sys.stderr
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with hub:
        for (kind, rid), repo in sorted(hub.repos.items()):
            print(f"serving {kind:8s} {rid} @ {repo.default.sha[:12]}", file=sys.stderr)
        print(f"READY {hub.url}", flush=True)
        while not stop.wait(0.1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
