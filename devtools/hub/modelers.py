"""The Modelers (openMind hub, modelers.cn) routes of the loopback hub.

What ``openmind_hub`` 1.3 (``plugins/openmind``) and hpcft's ModelersSource call:

    GET /api/v1/model/OWNER/REPO                       model info      (the client's repo check)
    GET /api/v1/dataset/OWNER/REPO                     dataset info
    GET /api/v1/file/OWNER/REPO?ref=REV&path=DIR       one folder level: {"data": {"tree": [...],
                                                       "last_commit": {"commit": {commit_sha, ...}}}}
    GET /api/v1/file/OWNER/REPO/info?ref=REV&path=P    {"data": {etag, size, branch_last_commit, url}}
    GET /api/v1/file/OWNER/REPO/REV/media/PATH         the bytes (Range, and the hub's faults)

Tree entries carry ``etag``: the sha256 for LFS files, the git blob id otherwise (what the
client's ``_verify_integrity`` checks). Errors are ``{"code": ..., "msg": ...}`` with the
codes the client maps (``ref_not_exist``, ``branch_or_path_not_found``). The API does not
say whether an id is a model or a dataset: the file routes look at models, then datasets.
"""

from __future__ import annotations

import urllib.parse
import zlib

from .repos import Repo, Snapshot

CREATED = "2024-01-01T08:00:00+08:00"  # the hub answers in China time
ROUTES = ("file", "model", "dataset")


def handle(h, method: str) -> None:
    """Answer one request under /api/v1/{file,model,dataset}/ (``h`` is the Handler)."""
    h.entry.protocol = "om"
    kind_route, segs = h.segs[2], h.segs[3:]
    if len(segs) < 2:
        _error(h, 404, "repo_not_exist", "repo id must be owner/name")
    rid, tail = "/".join(segs[:2]), segs[2:]
    q = {k: v[0] for k, v in h.query.items()}
    rev = q.get("ref") or "main"
    if kind_route == "file" and len(tail) >= 3 and tail[1] == "media":
        rev = tail[0]
        h.entry.file = "/".join(tail[2:])
        h.file_key = f"{rid}/{h.entry.file}"
    h.entry.repo_id, h.entry.revision = rid, rev
    h._check_fail(method)
    repo = _repo(h.hub, rid, None if kind_route == "file" else kind_route)
    if repo is None:
        _error(h, 404, "repo_not_exist", f"{rid} not found")
    h.entry.kind = repo.kind
    snap = repo.snapshot(rev)
    if snap is None:
        _error(h, 404, "ref_not_exist", f"revision {rev} not found")
    if kind_route in ("model", "dataset"):
        if tail:
            _error(h, 404, "not_found", "not found")
        h._json(200, {"data": _info(repo, snap)})
    if not tail:
        _tree(h, repo, snap, (q.get("path") or "").strip("/"))
    if tail == ["info"]:
        _file_info(h, repo, snap, rev, (q.get("path") or "").strip("/"))
    if h.entry.file is not None:
        path = h.entry.file
        if path not in snap.files:
            h._extra(path)
        if path not in snap.files or h._missing(method):
            _error(h, 404, "branch_or_path_not_found", f"{path} not found")
        h._send_file(method, snap, path, {"ETag": f'"{snap.files[path].etag}"'})
    _error(h, 404, "not_found", "not found")


def _repo(hub, rid: str, kind: str | None) -> Repo | None:
    with hub._lock:
        for k in ((kind,) if kind else ("model", "dataset")):
            if (k, rid) in hub.repos:
                return hub.repos[(k, rid)]
    return None


def _error(h, status: int, code: str, msg: str) -> None:
    h._json(status, {"code": code, "msg": msg, "data": None})


def _commit(snap: Snapshot) -> dict:
    return {"commit": {"commit_sha": snap.sha, "message": "Upload", "created": CREATED}}


def _tree(h, repo: Repo, snap: Snapshot, folder: str) -> None:
    if folder and folder not in snap.dirs:
        _error(h, 404, "branch_or_path_not_found", f"{folder} not found")
    tree = []
    for typ, path in snap.entries(folder, recursive=False):
        if typ == "directory":
            tree.append({"type": "dir", "path": path, "size": 0, "etag": snap.dir_oid(path), "is_lfs": False})
        elif not h.hub.faults.hidden(f"{repo.repo_id}/{path}"):
            e = snap.files[path]
            tree.append({"type": "file", "path": path, "size": e.size, "etag": e.etag, "is_lfs": e.lfs,
                         "commit": _commit(snap)["commit"]})
    body = h.hub.hostile.om_tree(repo.repo_id, folder, {"tree": tree, "last_commit": _commit(snap)})
    h._listing("om-tree", {"data": body}, snap.sha)


def _file_info(h, repo: Repo, snap: Snapshot, rev: str, path: str) -> None:
    if path not in snap.files or h.hub.faults.hidden(f"{repo.repo_id}/{path}"):
        _error(h, 404, "branch_or_path_not_found", f"{path} not found")
    e = snap.files[path]
    host = h.headers.get("Host") or f"{h.hub.host}:{h.hub.port}"
    url = f"{h.hub.scheme}://{host}/api/v1/file/{repo.repo_id}/{urllib.parse.quote(rev, safe='')}/media/" \
          f"{urllib.parse.quote(path)}"
    h._json(200, {"data": {"etag": e.etag, "size": e.size, "branch_last_commit": snap.sha, "url": url}})


def _info(repo: Repo, snap: Snapshot) -> dict:
    owner, name = repo.repo_id.split("/", 1)
    info = {"id": str(zlib.crc32(repo.repo_id.encode()) % 10**6), "name": name, "owner": owner, "author": owner,
            "fullname": repo.repo_id, "visibility": "public", "create_at": 1704067200,
            "updated_at": 1704067200, "download_count": 0, "like_count": 0,
            "labels": {"others": [], "task": None, "frameworks": ["PyTorch"]}}
    if repo.kind == "dataset":
        info.pop("labels")
    return info
