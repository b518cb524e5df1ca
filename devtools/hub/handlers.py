"""HTTP request handling for the loopback hub: HF, ModelScope and Modelers routes, faults, log."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse
import uuid
import zlib
from http.server import BaseHTTPRequestHandler

from . import modelers
from .faults import LogEntry
from .repos import Repo, Snapshot

API_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
KIND_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
FIXED_DATE = "2024-01-01T00:00:00.000Z"
INVERT = bytes(range(255, -1, -1))  # byte translation table for the "corrupt" fault
CHUNK = 64 * 1024


class _Done(Exception):
    """Raised once a response has been sent, to unwind the routing code."""


class Handler(BaseHTTPRequestHandler):
    hub = None  # set on the per-server subclass
    # HTTP/1.1 keep-alive, as the clients pool connections; every response therefore
    # carries Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "hpcft-hub/1"

    def log_message(self, *args) -> None:  # the RequestLog replaces stderr logging
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    # ------------------------------------------------------------------ plumbing
    def _handle(self, method: str) -> None:
        target = self.path
        self.path = self.hub.hostile.rewrite(target)  # a fake commit id back to the real one
        raw, _, query = self.path.partition("?")
        self.query = urllib.parse.parse_qs(query, keep_blank_values=True)
        # Split before unquoting: an encoded "/" (refs%2Fpr%2F1) stays inside its segment.
        self.segs = [urllib.parse.unquote(s) for s in raw.split("/") if s]
        self.entry = LogEntry(method, target, 0, range=self.headers.get("Range"),
                              auth=self.headers.get("Authorization"))
        self.file_key = None
        # Read any request body now, so an unrouted POST cannot desync a keep-alive connection.
        n = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(n) if n else b""
        # Logged on arrival and completed in place, every field set *before* the bytes it
        # describes are written: a client that has its answer can trust the log.
        self.hub.log.add(self.entry)
        try:
            if self.segs[:2] == ["api", "v1"] and len(self.segs) > 2 and self.segs[2] in modelers.ROUTES:
                modelers.handle(self, method)
            elif self.segs[:2] == ["api", "v1"]:
                self.entry.protocol = "ms"
                self._modelscope(method)
            elif self.segs[:1] == ["api"] and len(self.segs) > 2 and self.segs[1] in API_PLURAL:
                self.entry.protocol = "hf"
                self._hf_api(method, API_PLURAL[self.segs[1]], self.segs[2:])
            elif len(self.segs) >= 3:
                self.entry.protocol = "hf"
                kind = {"datasets": "dataset", "spaces": "space"}.get(self.segs[0], "model")
                self._hf_resolve(method, kind, self.segs[1:] if kind != "model" else self.segs)
            self._json(404, {"error": "Not Found"})
        except _Done:
            pass
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            self.hub.log.finish(self.entry)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.entry.status = status
        if self.command != "HEAD":
            self.entry.bytes_sent = len(body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        raise _Done

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _check_fail(self, method: str) -> None:
        rule = self.hub.faults.take("fail", method, (self.path, self.file_key))
        if rule is not None:
            self._mark("fail")
            if self.entry.protocol == "ms":
                self._json(rule.status, _ms_body(None, f"injected fault {rule.status}", code=rule.status))
            self._json(rule.status, {"error": f"injected fault {rule.status}"})
        location = self.hub.hostile.redirect_for(self.file_key)
        if location is not None:
            self._mark("redirect")
            self._send(302, b"", {"Location": location})

    def _listing(self, listing: str, obj, sha: str, headers: dict | None = None) -> None:
        """Send a file listing answer, unless hostile mode streams it (endless / drip)."""
        if self.hub.hostile.stream(self, listing, self.entry.repo_id, obj, sha):
            raise _Done
        self._json(200, obj, headers)

    def _extra(self, path: str) -> None:
        """Serve a file that only hostile mode lists (see hostile.Hostile.extra_file)."""
        data = self.hub.hostile.extra(self.entry.repo_id, path)
        if data is not None:
            self._mark("hostile")
            self._send(200, data, content_type="application/octet-stream")

    def _missing(self, method: str) -> bool:
        if self.hub.faults.take("missing", method, (self.path, self.file_key)):
            self._mark("missing")
            return True
        return False

    def _mark(self, fault: str) -> None:
        self.entry.fault = fault if not self.entry.fault else f"{self.entry.fault},{fault}"

    def _send_file(self, method: str, snap: Snapshot, path: str, headers: dict) -> None:
        """Serve one file: Range (206/416), and the drop / slow / corrupt faults."""
        entry = snap.files[path]
        keys = (self.path, self.file_key)
        size = entry.size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                self._send(416, b"", {"Content-Range": f"bytes */{size}", **headers})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers.update({"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)})
        self.entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            raise _Done
        data = snap.read(path)[start:end + 1]
        faults = self.hub.faults
        if faults.take("corrupt", method, keys):
            data = data.translate(INVERT)
            self._mark("corrupt")
        drop = faults.take("drop", method, keys, when=lambda r: r.after_bytes < len(data))
        slow = faults.take("slow", method, keys)
        limit = drop.after_bytes if drop else len(data)
        step = max(1, int(slow.rate / 20)) if slow else CHUNK
        if drop:
            self._mark("drop")
        if slow:
            self._mark("slow")
        sent = 0
        try:
            while sent < limit:
                chunk = data[sent:min(sent + step, limit)]
                self.entry.bytes_sent = sent + len(chunk)
                self.wfile.write(chunk)
                sent += len(chunk)
                if slow:
                    self.wfile.flush()
                    time.sleep(len(chunk) / slow.rate)
        except OSError:
            self.entry.bytes_sent = sent  # the client went away
            raise
        if drop:
            # Headers promised the full length; closing now leaves the client short,
            # exactly like a connection lost mid-transfer.
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise _Done

    # ------------------------------------------------------------------ Hugging Face
    def _hf_error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if commit:
            # Clients probe optional files (added_tokens.json, ...): an EntryNotFound
            # *with* X-Repo-Commit tells them the repo exists and the file does not.
            headers["X-Repo-Commit"] = commit
        self._json(status, {"error": message}, headers)

    def _hf_repo(self, kind: str, segs: list[str]) -> tuple[Repo | None, list[str]]:
        rid, repo, alias, n = self.hub.find(kind, segs)
        self.entry.kind, self.entry.repo_id = kind, rid
        need = self.hub.gated.get((kind, rid)) if repo is not None else None
        if need is not None and self.headers.get("Authorization") != f"Bearer {need}":
            # huggingface.co: a gated repo without a (valid) token is a 401 GatedRepo
            self._hf_error(401, "GatedRepo", f"Access to model {rid} is restricted. You must have access to it "
                                             "and be authenticated to access it.")
            raise _Done()
        if alias is not None:
            # huggingface.co answers renamed/legacy repo ids with a 307 to the canonical id.
            # huggingface_hub follows it only because it is relative (same host).
            loc = self.path.replace("/" + urllib.parse.quote(rid, safe="/") + "/", "/" + alias + "/", 1)
            if loc == self.path:
                loc = self.path.replace("/" + rid, "/" + alias, 1)
            self._send(307, b"", {"Location": loc})
        return repo, segs[n:]

    def _hf_api(self, method: str, kind: str, segs: list[str]) -> None:
        repo, tail = self._hf_repo(kind, segs)
        action = tail[0] if tail else ""
        rev = tail[1] if len(tail) > 1 else "main"
        self.entry.revision = rev
        self._check_fail(method)
        if repo is None:
            self._hf_error(404, "RepoNotFound", f"Repository not found: {self.entry.repo_id}")
        if action in ("", "revision"):
            rev = "/".join(tail[1:]) or "main"
        snap = repo.snapshot(rev)
        if action == "refs":
            self._json(200, _hf_refs(repo))
        if action not in ("", "revision", "tree", "paths-info"):
            self._json(404, {"error": "Not Found"})
        if snap is None:
            self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if action in ("", "revision"):
            self._json(200, self.hub.hostile.hf_info(repo.repo_id, self._hf_info(repo, snap)))
        if action == "paths-info":
            self._hf_paths_info(repo, snap)
        # tree/{rev}[/{path}]?recursive=&expand=&cursor=
        root = "/".join(tail[2:])
        if root and root not in snap.dirs:
            self._hf_error(404, "EntryNotFound", f"{root} does not exist on {rev}", snap.sha)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        items = [self._hf_tree_entry(repo, snap, t, p, expand) for t, p in snap.entries(root, recursive)
                 if t == "directory" or not self.hub.faults.hidden(f"{repo.repo_id}/{p}")]
        items = self.hub.hostile.hf_tree(repo.repo_id, items)
        offset = _decode_cursor(self.query.get("cursor", [""])[0])
        size = self.hub.tree_page_size
        headers = {}
        if offset + size < len(items):
            # The client pages by following Link: <next>; rel="next" verbatim.
            q = {k: v[0] for k, v in self.query.items()}
            q["cursor"] = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
            host = self.headers.get("Host") or f"{self.hub.host}:{self.hub.port}"
            nxt = f"http://{host}{self.path.partition('?')[0]}?{urllib.parse.urlencode(q)}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._listing("hf-tree", items[offset:offset + size], snap.sha, headers)

    def _hf_tree_entry(self, repo: Repo, snap: Snapshot, typ: str, path: str, expand: bool) -> dict:
        if typ == "directory":
            item = {"type": "directory", "oid": snap.dir_oid(path), "size": 0, "path": path}
        else:
            e = snap.files[path]
            # No "xetHash": with it, huggingface_hub would fetch through the Xet CAS service.
            item = {"type": "file", "oid": e.git_oid, "size": e.size, "path": path}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
        if expand:
            item["lastCommit"] = {"id": snap.sha, "title": "Upload", "date": FIXED_DATE}
        return item

    def _hf_paths_info(self, repo: Repo, snap: Snapshot) -> None:
        body = self.body.decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            req = json.loads(body or "{}")
            paths, expand = req.get("paths", []), bool(req.get("expand"))
        else:
            form = urllib.parse.parse_qs(body)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[0].lower() == "true"
        out = []
        for p in paths:
            p = p.strip("/")
            if p in snap.files and not self.hub.faults.hidden(f"{repo.repo_id}/{p}"):
                out.append(self._hf_tree_entry(repo, snap, "file", p, expand))
            elif p in snap.dirs:
                out.append(self._hf_tree_entry(repo, snap, "directory", p, expand))
        self._json(200, out)

    def _hf_info(self, repo: Repo, snap: Snapshot) -> dict:
        rid = repo.repo_id
        visible = [p for p in snap.files if not self.hub.faults.hidden(f"{rid}/{p}")]
        blobs = self.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for p in visible:
            s = {"rfilename": p}
            if blobs:
                e = snap.files[p]
                s.update(size=e.size, blobId=e.git_oid)
                if e.lfs:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(s)
        info = {"_id": snap.sha[:24], "id": rid, "author": rid.split("/")[0] if "/" in rid else None,
                "sha": snap.sha, "lastModified": FIXED_DATE, "createdAt": FIXED_DATE, "private": False,
                "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": siblings, "usedStorage": sum(e.size for e in snap.files.values())}
        if repo.kind == "model":
            info.update(modelId=rid, library_name="transformers", pipeline_tag="fill-mask")
            if "config.json" in snap.files:
                try:
                    cfg = json.loads(snap.read("config.json"))
                    info["config"] = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg}
                except ValueError:
                    pass
        elif repo.kind == "space":
            info.update(sdk="gradio", runtime={"stage": "RUNNING"}, subdomain=rid.replace("/", "-"))
        return info

    def _hf_resolve(self, method: str, kind: str, segs: list[str]) -> None:
        if "resolve" not in segs[1:3]:
            return  # -> 404
        repo, tail = self._hf_repo(kind, segs)
        if not tail or tail[0] != "resolve" or len(tail) < 3:
            return
        rev, path = tail[1], "/".join(tail[2:])
        self.entry.revision, self.entry.file = rev, path
        self.file_key = f"{self.entry.repo_id}/{path}"
        self._check_fail(method)
        if repo is None:
            self._hf_error(404, "RepoNotFound", f"Repository not found: {self.entry.repo_id}")
        snap = repo.snapshot(rev)
        if snap is None:
            self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if path not in snap.files:
            self._extra(path)
        if path not in snap.files or self._missing(method):
            self._hf_error(404, "EntryNotFound", f"Entry not found: {path}", snap.sha)
        e = snap.files[path]
        headers = {"X-Repo-Commit": snap.sha, "ETag": f'"{e.etag}"'}
        if e.lfs:  # what a CDN redirect would carry; the client prefers these
            headers.update({"X-Linked-Etag": f'"{e.sha256}"', "X-Linked-Size": str(e.size)})
        self._send_file(method, snap, path, headers)

    # ------------------------------------------------------------------ ModelScope
    def _modelscope(self, method: str) -> None:
        segs = self.segs[2:]
        if segs[:2] == ["repos", "internalAccelerationInfo"]:
            # Only answered inside Alibaba Cloud; a 404 makes the client use the endpoint.
            self._json(404, _ms_body(None, "not found", code=404))
        if len(segs) < 3 or segs[0] not in API_PLURAL:
            self._json(404, _ms_body(None, "not found", code=404))
        kind, rid, tail = API_PLURAL[segs[0]], "/".join(segs[1:3]), segs[3:]
        q = {k: v[0] for k, v in self.query.items()}
        rev = q.get("Revision") or "master"
        self.entry.kind, self.entry.repo_id, self.entry.revision = kind, rid, rev
        if tail == ["repo"] and "FilePath" in q:
            self.entry.file = q["FilePath"].lstrip("/")
            self.file_key = f"{rid}/{self.entry.file}"
        self._check_fail(method)
        repo = self.hub.ms_repo(kind, rid)
        if repo is None:
            self._json(404, _ms_body(None, f"{kind} {rid} not found", code=10010205001))
        if tail == ["revisions"]:
            self._json(200, _ms_body(self.hub.hostile.ms_revisions(rid, _ms_revisions(repo))))
        snap = repo.snapshot(rev)
        if snap is None:
            self._json(404, _ms_body(None, f"revision {rev} not found", code=10010205002))
        if not tail:
            self._json(200, _ms_body(_ms_info(repo, snap)))
        if tail in (["repo", "files"], ["repo", "tree"]):
            root = (q.get("Root") or "").strip("/")
            recursive = q.get("Recursive", "False").lower() == "true"
            files = [_ms_entry(repo, snap, t, p, rev) for t, p in snap.entries(root, recursive)
                     if t == "directory" or not self.hub.faults.hidden(f"{rid}/{p}")]
            files = self.hub.hostile.ms_files(rid, files, rev, snap.sha)
            if tail[1] == "tree":  # datasets page; the client stops at a short page
                n, size = int(q.get("PageNumber") or 1), int(q.get("PageSize") or 100)
                files = files[(n - 1) * size:n * size]
            self._listing("ms-files", _ms_body({"Files": files}), snap.sha)
        if tail == ["repo"] and self.entry.file:
            path = self.entry.file
            if path not in snap.files:
                self._extra(path)
            if path not in snap.files or self._missing(method):
                self._json(404, _ms_body(None, f"file {path} not found", code=10010205003))
            e = snap.files[path]
            self._send_file(method, snap, path, {"ETag": f'"{e.sha256}"'})
        self._json(404, _ms_body(None, "not found", code=404))


def _ms_body(data, message: str = "success", code: int = 200) -> dict:
    # Every ModelScope API answer is wrapped like this, errors included.
    return {"Code": code, "Data": data, "Message": message, "RequestId": uuid.uuid4().hex,
            "Success": code == 200}


def _ms_entry(repo: Repo, snap: Snapshot, typ: str, path: str, rev: str) -> dict:
    name = path.rsplit("/", 1)[-1]
    if typ == "directory":
        return {"Name": name, "Path": path, "Type": "tree", "Size": 0, "Revision": rev,
                "CommitId": snap.sha, "Mode": "040000"}
    e = snap.files[path]
    return {"Name": name, "Path": path, "Type": "blob", "Size": e.size, "Sha256": e.sha256,
            "Revision": rev, "CommitId": snap.sha, "Id": e.git_oid, "IsLFS": e.lfs, "Mode": "100644",
            "CommittedDate": 1704067200}


def _ms_revisions(repo: Repo) -> dict:
    def item(name, snap):
        return {"Revision": name, "CreatedAt": 1704067200, "CommitId": snap.sha}

    return {"RevisionMap": {"Branches": [item("master", repo.default)],
                            "Tags": [item(n, s) for n, s in repo.tags.items()]}}


def _ms_info(repo: Repo, snap: Snapshot) -> dict:
    ns, name = repo.repo_id.split("/", 1)
    return {"Id": zlib.crc32(repo.repo_id.encode()) % 10**6, "Name": name, "Path": ns, "ChineseName": name,
            "Revision": "master", "LatestCommitId": snap.sha, "Visibility": 5, "IsPublished": 1,
            "Downloads": 0, "Stars": 0, "CreatedTime": 1704067200, "LastUpdatedTime": 1704067200,
            "Type": {"model": 0, "dataset": 1}.get(repo.kind, 0)}


def _hf_refs(repo: Repo) -> dict:
    return {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.default.sha}],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s.sha} for n, s in repo.tags.items()],
            "converts": []}


def _decode_cursor(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
    except ValueError:
        return 0


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` ranges (all the clients send)."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            n = int(b)
            start, end = max(0, size - n), size - 1
        else:
            start, end = int(a), (int(b) if b else size - 1)
    except ValueError:
        return None
    end = min(end, size - 1)
    if start > end or start >= size:
        return None
    return start, end
