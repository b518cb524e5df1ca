"""Hostile mode of the loopback hub: a mirror that lies on purpose, in the ways a real one could.

A mirror is a third party. What ``hpcft stage`` reads from it -- file names in a listing, the
commit a revision resolves to, the size of an answer, where a download redirects to -- must not
be able to write outside the cache, leak a token, or hang a login node. Tests arm these
behaviours per repo through ``hub.hostile`` (never through variables the product reads); every
listing protocol the hub speaks is covered where it can carry the lie:

    hub.hostile.extra_file(rid, "../../x.json")        # listed with a matching hash, and served
    hub.hostile.commit(rid, "111111111111/../../outside")  # the commit id the listings answer with
    hub.hostile.no_hashes(rid, "model.safetensors")    # listed without oid/lfs, Sha256, etag
    hub.hostile.endless(rid, seconds=20)               # a listing body that never ends
    hub.hostile.drip(rid, bytes_per_sec=1, seconds=20) # a valid listing, one byte per second
    hub.hostile.redirect(f"{rid}/model.safetensors", "ftp://127.0.0.1/x")   # 302 on the download

Listings: HF ``/api/{models,...}/{repo}/revision/{rev}`` (``sha``) and ``/tree/{sha}``; ModelScope
``/api/v1/models/{repo}/repo/files``, ``/api/v1/datasets/{repo}/repo/tree`` and ``/revisions``
(``CommitId``); Modelers ``/api/v1/file/{owner}/{repo}?ref=&path=`` (``commit_sha``, ``etag``).
Wrong bytes and slow downloads are plain faults (``hub.faults.corrupt`` / ``.slow``).
:class:`Recorder` is the far end of a redirect: a second server that records request headers.
``hub.reset()`` clears every hostile rule (the ``hub`` fixture does, before and after a test).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Hostile", "Recorder", "Recorded", "LISTINGS"]

# The listing answers a stream rule can take over (see Hostile.stream).
LISTINGS = ("hf-tree", "ms-files", "om-tree")


@dataclass
class _Extra:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.name.endswith((".safetensors", ".bin"))

    def git_oid(self, blob: bytes | None = None) -> str:
        blob = self.data if blob is None else blob
        return hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()


@dataclass
class _Stream:
    how: str            # endless | drip
    rate: float         # bytes per second
    seconds: float      # the server gives up by itself after this long
    listings: tuple[str, ...]
    hits: int = 0


@dataclass
class _Rules:
    extras: list[_Extra] = field(default_factory=list)
    commit: str | None = None
    no_hash: list[str] = field(default_factory=list)   # globs on the repo-relative path
    stream: _Stream | None = None


class Hostile:
    """Per-repo lies, keyed by repo id (any kind, every protocol). Thread-safe."""

    def __init__(self, hub):
        self._hub = hub
        self._lock = threading.Lock()
        self._repos: dict[str, _Rules] = {}
        self._redirects: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ arming (test side)
    def _rules(self, repo_id: str) -> _Rules:
        return self._repos.setdefault(repo_id, _Rules())

    def extra_file(self, repo_id: str, name: str, data: bytes = b'{"pwned": true}\n') -> None:
        """List ``name`` (verbatim: ``../../x.json``, ``/abs/x.json``, ``a\\x00.json``...) next to the
        repo's real files, with its true size and hash, and serve ``data`` when it is asked for.
        ``.safetensors``/``.bin`` names are listed as LFS files (sha256), others by git blob id."""
        with self._lock:
            self._rules(repo_id).extras.append(_Extra(name, data))

    def commit(self, repo_id: str, value: str) -> None:
        """Answer with ``value`` as the commit id: HF ``sha``, ModelScope ``CommitId``, Modelers
        ``commit_sha``. Requests that then carry ``value`` in their URL (HF ``/tree/{sha}``,
        ``/resolve/{sha}/...``) are answered as if they carried the real commit."""
        with self._lock:
            self._rules(repo_id).commit = value

    def no_hashes(self, repo_id: str, pattern: str = "*") -> None:
        """List matching files without any hash: HF entries with neither ``oid`` nor ``lfs``,
        ModelScope entries without ``Sha256`` (and ``Id``), Modelers entries without ``etag``."""
        with self._lock:
            self._rules(repo_id).no_hash.append(pattern)

    def endless(self, repo_id: str, *, seconds: float, bytes_per_sec: float = 4_000_000,
                listings: tuple[str, ...] = LISTINGS) -> None:
        """Answer the repo's file listing with a body that never ends: no Content-Length, the
        opening of a valid answer, then file entries at ``bytes_per_sec``. The server stops by
        itself after ``seconds`` (pass the test's own deadline) or when the client goes away."""
        with self._lock:
            self._rules(repo_id).stream = _Stream("endless", float(bytes_per_sec), float(seconds), listings)

    def drip(self, repo_id: str, *, seconds: float, bytes_per_sec: float = 1.0,
             listings: tuple[str, ...] = LISTINGS) -> None:
        """Answer the repo's file listing with its true, valid JSON (Content-Length set), one byte
        per ``1 / bytes_per_sec`` seconds; stops after ``seconds`` or when the client goes away."""
        with self._lock:
            self._rules(repo_id).stream = _Stream("drip", float(bytes_per_sec), float(seconds), listings)

    def redirect(self, pattern: str, location: str) -> None:
        """Answer file downloads whose file key (``{repo_id}/{path}``) matches ``pattern`` with a
        302 to ``location`` (another local port, an ``ftp://`` URL...)."""
        with self._lock:
            self._redirects.append((pattern, location))

    def clear(self) -> None:
        with self._lock:
            self._repos.clear()
            self._redirects.clear()

    def stream_hits(self, repo_id: str) -> int:
        """How many listing answers a stream rule of ``repo_id`` took over."""
        with self._lock:
            rules = self._repos.get(repo_id)
            return rules.stream.hits if rules and rules.stream else 0

    # ------------------------------------------------------------------ serving (handler side)
    def _get(self, repo_id: str | None) -> _Rules | None:
        if repo_id is None:
            return None
        with self._lock:
            return self._repos.get(repo_id)

    def _real_sha(self, repo_id: str) -> str | None:
        with self._hub._lock:
            for (_, rid), repo in self._hub.repos.items():
                if rid == repo_id:
                    return repo.default.sha
        return None

    def rewrite(self, target: str) -> str:
        """The request target with a fake commit (see :meth:`commit`) replaced by the real one."""
        with self._lock:
            fakes = [(rid, r.commit) for rid, r in self._repos.items() if r.commit]
        for rid, fake in fakes:
            if rid not in target and urllib.parse.quote(rid, safe="") not in target:
                continue
            real = self._real_sha(rid)
            if real is None:
                continue
            forms = {fake, urllib.parse.quote(fake), urllib.parse.quote(fake, safe="")}
            for form in sorted(forms, key=len, reverse=True):
                target = target.replace(form, real)
        return target

    def redirect_for(self, file_key: str | None) -> str | None:
        if file_key is None:
            return None
        with self._lock:
            for pattern, location in self._redirects:
                if fnmatch.fnmatchcase(file_key, pattern):
                    return location
        return None

    def extra(self, repo_id: str | None, path: str) -> bytes | None:
        """The bytes of a listed extra file ``path`` asks for. URLs lose empty segments (``a//b``,
        a leading ``/``) on the way, so names are compared with those dropped too."""
        rules = self._get(repo_id)
        if rules is None:
            return None
        for e in rules.extras:
            if path == e.name or _squash(path) == _squash(e.name):
                return e.data
        return None

    def _hashless(self, rules: _Rules, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in rules.no_hash)

    def hf_info(self, repo_id: str, info: dict) -> dict:
        rules = self._get(repo_id)
        if rules is not None:
            if rules.commit is not None:
                info["sha"] = rules.commit
            for e in rules.extras:
                info.setdefault("siblings", []).append({"rfilename": e.name})
        return info

    def hf_tree(self, repo_id: str, items: list) -> list:
        rules = self._get(repo_id)
        if rules is None:
            return items
        for e in rules.extras:
            item = {"type": "file", "oid": e.git_oid(e.pointer if e.lfs else None), "size": len(e.data),
                    "path": e.name}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": len(e.data), "pointerSize": len(e.pointer)}
            items.append(item)
        for item in items:
            if item.get("type") == "file" and self._hashless(rules, item["path"]):
                item.pop("oid", None)
                item.pop("lfs", None)
        return items

    def ms_files(self, repo_id: str, files: list, rev: str, sha: str) -> list:
        rules = self._get(repo_id)
        if rules is None:
            return files
        for e in rules.extras:
            files.append({"Name": posixpath.basename(e.name), "Path": e.name, "Type": "blob",
                          "Size": len(e.data), "Sha256": e.sha256, "Revision": rev, "CommitId": sha,
                          "Id": e.git_oid(e.pointer if e.lfs else None), "IsLFS": e.lfs, "Mode": "100644",
                          "CommittedDate": 1704067200})
        for f in files:
            if rules.commit is not None:
                f["CommitId"] = rules.commit
            if f.get("Type") == "blob" and self._hashless(rules, f["Path"]):
                f.pop("Sha256", None)
                f.pop("Id", None)
        return files

    def ms_revisions(self, repo_id: str, data: dict) -> dict:
        rules = self._get(repo_id)
        if rules is not None and rules.commit is not None:
            revmap = data["RevisionMap"]
            for item in revmap["Branches"] + revmap["Tags"]:
                item["CommitId"] = rules.commit
        return data

    def om_tree(self, repo_id: str, folder: str, body: dict) -> dict:
        rules = self._get(repo_id)
        if rules is None:
            return body
        if rules.commit is not None:
            body["last_commit"]["commit"]["commit_sha"] = rules.commit
        for it in body["tree"]:
            if rules.commit is not None and "commit" in it:
                it["commit"] = {**it["commit"], "commit_sha": rules.commit}
            if it.get("type") == "file" and self._hashless(rules, it["path"]):
                it.pop("etag", None)
        if not folder:  # the extras hang off the top level, as their names say
            for e in rules.extras:
                body["tree"].append({"type": "file", "path": e.name, "size": len(e.data),
                                     "etag": e.sha256 if e.lfs else e.git_oid(), "is_lfs": e.lfs})
        return body

    def stream(self, h, listing: str, repo_id: str | None, obj, sha: str) -> bool:
        """Serve ``obj`` (the answer the handler was about to send) the hostile way, if a rule
        says so; True when the answer has been sent (the handler must then stop)."""
        rules = self._get(repo_id)
        rule = rules.stream if rules is not None else None
        if rule is None or listing not in rule.listings:
            return False
        with self._lock:
            rule.hits += 1
        h._mark(rule.how)
        if rule.how == "endless":
            prefix, unit = _endless_parts(listing, sha)
            _send_endless(h, prefix, unit, rule)
        else:
            _send_drip(h, json.dumps(obj).encode(), rule)
        return True


def _squash(path: str) -> str:
    return "/".join(p for p in path.split("/") if p)


def _endless_parts(listing: str, sha: str) -> tuple[bytes, bytes]:
    """The opening of a valid answer of this listing, and one file entry to repeat forever."""
    if listing == "hf-tree":
        return b"[", b'{"type":"file","oid":"%s","size":1,"path":"a.json"},' % sha.encode()
    if listing == "ms-files":
        return (b'{"Code":200,"Success":true,"Message":"success","Data":{"Files":[',
                b'{"Name":"a.json","Path":"a.json","Type":"blob","Size":1,"Sha256":"%s"},' % (sha * 2)[:64].encode())
    return (b'{"data":{"last_commit":{"commit":{"commit_sha":"%s"}},"tree":[' % sha.encode(),
            b'{"type":"file","path":"a.json","size":1,"etag":"%s","is_lfs":false},' % sha.encode())


def _send_endless(h, prefix: bytes, unit: bytes, rule: _Stream) -> None:
    h.entry.status = 200
    h.close_connection = True  # no Content-Length: the body ends when the connection does
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Connection", "close")
    h.end_headers()
    block = unit * max(1, 65536 // len(unit))
    pause = len(block) / rule.rate
    deadline = time.monotonic() + rule.seconds
    h.wfile.write(prefix)
    sent = len(prefix)
    while time.monotonic() < deadline:
        h.wfile.write(block)
        sent += len(block)
        h.entry.bytes_sent = sent
        time.sleep(pause)


def _send_drip(h, body: bytes, rule: _Stream) -> None:
    h.entry.status = 200
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    deadline = time.monotonic() + rule.seconds
    for i in range(len(body)):
        if time.monotonic() >= deadline:
            h.close_connection = True  # short of what Content-Length promised: close
            return
        h.wfile.write(body[i:i + 1])
        h.entry.bytes_sent = i + 1
        time.sleep(1.0 / rule.rate)


# ---------------------------------------------------------------------------- the far end
@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Recorder:
    """A second loopback HTTP server that records every request (method, target, all headers)
    and answers each with ``status`` and ``body``: where a hostile redirect points, so a test
    can check which headers (a token?) followed the redirect.

        with Recorder() as far:
            hub.hostile.redirect(f"{rid}/model.safetensors", far.url + "/steal")
            ...
            assert all(r.get("Authorization") is None for r in far.requests)
    """

    def __init__(self, status: int = 404, body: bytes = b'{"error": "not here"}',
                 content_type: str = "application/json"):
        self.status, self.body, self.content_type = status, body, content_type
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> "Recorder":
        recorder = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                with recorder._lock:
                    recorder.requests.append(Recorded(self.command, self.path, list(self.headers.items())))
                self.send_response(recorder.status)
                self.send_header("Content-Type", recorder.content_type)
                self.send_header("Content-Length", str(len(recorder.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(recorder.body)

            do_GET = do_HEAD = do_POST = _answer

        if self._httpd is None:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            self._httpd.daemon_threads = True
            threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="recorder", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "Recorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("start() the recorder first")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"
