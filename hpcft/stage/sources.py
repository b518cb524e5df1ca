"""The three hub protocols: resolve a revision, list files, build download URLs.

Endpoints come from, highest first: ``HF_ENDPOINT`` / ``MODELSCOPE_ENDPOINT`` /
``OPENMIND_HUB_ENDPOINT`` in the environment (what tutorials tell users to export), then
``sources.hf_endpoint`` / ``sources.modelscope_endpoint`` / ``sources.modelers_endpoint``
in the cluster/user config (defaults: hf-mirror.com, www.modelscope.cn, modelers.cn).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core import names
from ..core.errors import StageError
from ..core.resolve import AssetRef
from .http import BadAnswer, HTTPFailure, Policy, Unreachable, get_json, set_token

SOURCES = ("hf", "modelscope", "modelers")
MAX_FILES = 100_000  # entries in one repo listing; more is a mirror that never stops paging


@dataclass
class RemoteFile:
    path: str
    size: int
    url: str
    sha256: Optional[str] = None
    git_oid: Optional[str] = None

    @property
    def verified(self) -> bool:
        """The listing gives a hash to check the bytes against."""
        return bool(self.sha256 or self.git_oid)


@dataclass
class Listing:
    source: str
    endpoint: str
    repo_id: str            # the id the hub answered with (canonical after a redirect)
    revision: str           # what was asked for (main, master, a tag, a sha)
    sha: str                # the resolved commit
    files: list[RemoteFile] = field(default_factory=list)

    def by_path(self) -> dict[str, RemoteFile]:
        return {f.path: f for f in self.files}


class SourceError(Exception):
    """What one source said about one asset; ``kind`` is not_found | revision | unreachable | error."""

    def __init__(self, source: "Source", kind: str, message: str):
        self.source, self.kind = source, kind
        super().__init__(message)

    def line(self) -> str:
        return f"{self.source.name} ({self.source.endpoint}): {self}"


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class Source:
    name = ""
    env_var = ""
    config_key = ""

    def __init__(self, endpoint: str, policy: Policy):
        self.endpoint = endpoint.rstrip("/")
        self.policy = policy

    def hint(self) -> str:
        return f"set {self.env_var} or {self.config_key} in the hpcft config"

    def headers(self) -> dict:
        """Request headers for listings and downloads (a token, where the source has one)."""
        return {}

    def _get(self, url: str, what: str):
        try:
            return get_json(url, self.policy, self.headers())
        except Unreachable as exc:
            raise SourceError(self, "unreachable", f"cannot reach {self.endpoint} ({exc})") from None
        except BadAnswer as exc:
            raise SourceError(self, "error", f"{what}: {exc.message()}; refused") from None
        except HTTPFailure as exc:
            raise self._http_error(exc, what) from None

    def file(self, item_path: object, size: object, url_of, what: str, *, sha256: object = None,
             git_oid: object = None) -> RemoteFile:
        """One listing entry, validated: the name before it can become a path, the size and hashes
        before they are believed."""
        try:
            path = names.rel_path(item_path, f"{what} file list")
            n = names.size(size, f"{what} file list", path)
        except names.UnsafeName as exc:
            raise SourceError(self, "error", str(exc)) from None
        return RemoteFile(path, n, url_of(path), sha256=names.sha256(sha256), git_oid=names.git_oid(git_oid))

    def commit(self, value: object, what: str) -> str:
        try:
            return names.commit(value, f"{self.name} ({self.endpoint})", what)
        except names.UnsafeName as exc:
            raise SourceError(self, "error", str(exc)) from None

    def check_count(self, files: list, what: str) -> None:
        if len(files) > MAX_FILES:
            raise SourceError(self, "error", f"{what}: the file list has more than {MAX_FILES} entries; refused")

    def _http_error(self, exc: HTTPFailure, what: str) -> SourceError:
        raise NotImplementedError

    def listing(self, ref: AssetRef, revision: Optional[str]) -> Listing:
        raise NotImplementedError


class HFSource(Source):
    name = "hf"
    env_var = "HF_ENDPOINT"
    config_key = "sources.hf_endpoint"
    API = {"model": "models", "dataset": "datasets", "metric": "spaces"}
    PREFIX = {"model": "", "dataset": "datasets/", "metric": "spaces/"}

    def _http_error(self, exc: HTTPFailure, what: str) -> SourceError:
        code = exc.error_code()
        if code == "RevisionNotFound":
            return SourceError(self, "revision", f"revision not found: {what}")
        if code in ("RepoNotFound", "GatedRepo") or exc.status in (401, 404):
            return SourceError(self, "not_found", f"{what}: not found (HTTP {exc.status}"
                               f"{', ' + code if code else ''})")
        return SourceError(self, "error", f"{what}: HTTP {exc.status} {exc.message()}".strip())

    def listing(self, ref: AssetRef, revision: Optional[str]) -> Listing:
        api, rid = self.API[ref.kind], ref.repo_id
        rev = revision or "main"
        info, _ = self._get(f"{self.endpoint}/api/{api}/{rid}/revision/{_q(rev)}", f"{ref.kind} {rid}@{rev}"
                            if revision else f"{ref.kind} {rid}")
        sha = info.get("sha") if isinstance(info, dict) else None
        if not sha:
            raise SourceError(self, "error", f"{ref.kind} {rid}: the endpoint's answer has no commit sha")
        sha = self.commit(sha, f"{ref.kind} {rid}")
        canonical = info.get("id") or rid
        if not isinstance(canonical, str) or "/" not in canonical:
            canonical = rid
        try:
            canonical = names.repo_id(canonical, f"{ref.kind} {rid}: the endpoint's answer")
        except names.UnsafeName as exc:
            raise SourceError(self, "error", str(exc)) from None
        files: list[RemoteFile] = []
        url = f"{self.endpoint}/api/{api}/{canonical}/tree/{sha}?recursive=true&expand=false"
        base = f"{self.endpoint}/{self.PREFIX[ref.kind]}{canonical}/resolve/{sha}/"
        while url:
            items, headers = self._get(url, f"{ref.kind} {rid} file list")
            for it in items if isinstance(items, list) else []:
                if not isinstance(it, dict) or it.get("type") != "file":
                    continue
                lfs = it.get("lfs") if isinstance(it.get("lfs"), dict) else {}
                files.append(self.file(it.get("path"), lfs.get("size") or it.get("size") or 0,
                                       lambda p: base + urllib.parse.quote(p), f"{ref.kind} {rid}",
                                       sha256=lfs.get("oid") or lfs.get("sha256"),
                                       git_oid=None if lfs else it.get("oid")))
            self.check_count(files, f"{ref.kind} {rid}")
            url = _next_link(headers.get("Link") or headers.get("link") or "")
            if url and not url.startswith(self.endpoint + "/"):
                raise SourceError(self, "error", f"{ref.kind} {rid}: the file list pages to another host "
                                                 f"({url[:80]}); refused")
        return Listing(self.name, self.endpoint, canonical, rev, sha, files)


def _next_link(header: str) -> Optional[str]:
    for part in header.split(","):
        if 'rel="next"' in part:
            return part.split(";")[0].strip().strip("<>")
    return None


class ModelScopeSource(Source):
    name = "modelscope"
    env_var = "MODELSCOPE_ENDPOINT"
    config_key = "sources.modelscope_endpoint"

    def _http_error(self, exc: HTTPFailure, what: str) -> SourceError:
        msg = exc.message()
        if exc.status == 404 and "revision" in msg.lower():
            return SourceError(self, "revision", f"revision not found: {what}")
        if exc.status in (401, 403, 404):
            return SourceError(self, "not_found", f"{what}: not found (HTTP {exc.status}{': ' + msg if msg else ''})")
        return SourceError(self, "error", f"{what}: HTTP {exc.status} {msg}".strip())

    def listing(self, ref: AssetRef, revision: Optional[str]) -> Listing:
        if ref.kind == "metric":
            raise SourceError(self, "not_found", "ModelScope does not host evaluate metrics (use the hf source)")
        rid = ref.ms_id or ref.repo_id
        if "/" not in rid:
            raise SourceError(self, "not_found", f"{ref.kind} {rid}: ModelScope ids have the form org/name")
        rev = revision or "master"
        plural = "models" if ref.kind == "model" else "datasets"
        what = f"{ref.kind} {rid}@{rev}" if revision else f"{ref.kind} {rid}"
        raw: list[dict] = []
        if ref.kind == "model":
            data, _ = self._get(f"{self.endpoint}/api/v1/models/{rid}/repo/files?Revision={_q(rev)}&Recursive=True",
                                what)
            raw = _ms_files(self, data, what)
        else:
            page = 1
            while True:
                data, _ = self._get(f"{self.endpoint}/api/v1/datasets/{rid}/repo/tree?Revision={_q(rev)}"
                                    f"&Recursive=True&PageNumber={page}&PageSize=200", what)
                batch = _ms_files(self, data, what)
                raw += batch
                if len(batch) < 200:
                    break
                if len(raw) > MAX_FILES:
                    self.check_count(raw, what)
                page += 1
        files = []
        for it in raw:
            if not isinstance(it, dict) or it.get("Type") == "tree":
                continue
            files.append(self.file(it.get("Path"), it.get("Size") or 0,
                                   lambda p: f"{self.endpoint}/api/v1/{plural}/{rid}/repo?Revision={_q(rev)}"
                                             f"&FilePath={_q(p)}", what, sha256=it.get("Sha256")))
        self.check_count(files, what)
        commit = self._commit(plural, rid, rev)
        sha = self.commit(commit, what) if commit is not None else _content_sha(files)
        return Listing(self.name, self.endpoint, ref.repo_id, rev, sha, files)

    def _commit(self, plural: str, rid: str, rev: str) -> Optional[str]:
        """The commit id of a branch/tag, when the endpoint tells (else a content hash is used)."""
        try:
            data, _ = get_json(f"{self.endpoint}/api/v1/{plural}/{rid}/revisions", self.policy)
        except (Unreachable, HTTPFailure):
            return None
        revmap = ((data or {}).get("Data") or {}).get("RevisionMap") or {}
        items = (revmap.get("Branches") or []) + (revmap.get("Tags") or []) if isinstance(revmap, dict) else []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("Revision") == rev and item.get("CommitId"):
                return item["CommitId"]
        return None


def _ms_files(src: Source, data, what: str) -> list[dict]:
    if not isinstance(data, dict) or (data.get("Code") not in (None, 200) and not data.get("Success")):
        msg = data.get("Message") if isinstance(data, dict) else "unexpected answer"
        raise SourceError(src, "not_found" if "not found" in str(msg).lower() else "error", f"{what}: {msg}")
    body = data.get("Data") if isinstance(data.get("Data"), dict) else {}
    files = body.get("Files") or []
    if not isinstance(files, list):
        raise SourceError(src, "error", f"{what}: unexpected file list from the endpoint")
    return files


def _content_sha(files: list[RemoteFile]) -> str:
    h = hashlib.sha1()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256 or f.size}\n".encode())
    return h.hexdigest()


class ModelersSource(Source):
    """The Modelers community hub (modelers.cn, the openMind hub): Ascend-ready models and datasets.

    Its file API lists one folder level per call (``/api/v1/file/OWNER/REPO?ref=&path=``),
    with the commit in ``last_commit`` and per file an ``etag`` (sha256 for LFS files, the git
    blob id otherwise); bytes come from ``/api/v1/file/OWNER/REPO/REV/media/PATH``. A token
    (``OPENMIND_HUB_TOKEN`` or ``sources.modelers_token_file``) is sent as a header only.
    """

    name = "modelers"
    env_var = "OPENMIND_HUB_ENDPOINT"
    config_key = "sources.modelers_endpoint"

    def __init__(self, endpoint: str, policy: Policy, token: Optional[str] = None):
        super().__init__(endpoint, policy)
        self.__token = token

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.__token}"} if self.__token else {}

    def _http_error(self, exc: HTTPFailure, what: str) -> SourceError:
        code = _modelers_code(exc.body)
        if exc.status == 404 and code == "ref_not_exist":
            return SourceError(self, "revision", f"revision not found: {what}")
        if exc.status in (401, 403, 404):
            return SourceError(self, "not_found", f"{what}: not found (HTTP {exc.status}"
                               f"{', ' + code if code else ''}{'' if self.__token else '; private repos need OPENMIND_HUB_TOKEN'})")
        return SourceError(self, "error", f"{what}: HTTP {exc.status} {exc.message()}".strip())

    def listing(self, ref: AssetRef, revision: Optional[str]) -> Listing:
        if ref.kind == "metric":
            raise SourceError(self, "not_found", "Modelers does not host evaluate metrics (use the hf source)")
        rid = ref.om_id or ref.repo_id
        if rid.count("/") != 1:
            raise SourceError(self, "not_found", f"{ref.kind} {rid}: Modelers ids have the form owner/name")
        rev = revision or "main"
        what = f"{ref.kind} {rid}@{rev}" if revision else f"{ref.kind} {rid}"
        # the repo's info first: a dataset asked for as a model (or the reverse) is "not found" here
        self._get(f"{self.endpoint}/api/v1/{ref.kind}/{rid}?ref={_q(rev)}", what)
        files: list[RemoteFile] = []
        sha: Optional[str] = None
        todo, seen = [""], set()
        while todo:  # the API lists one folder level per call
            folder = todo.pop(0)
            data, _ = self._get(f"{self.endpoint}/api/v1/file/{rid}?ref={_q(rev)}&path={_q(folder)}", what)
            body = data.get("data") if isinstance(data, dict) else None
            if not isinstance(body, dict) or not isinstance(body.get("tree"), list):
                raise SourceError(self, "error", f"{what}: unexpected file list from the endpoint")
            if sha is None:
                sha = _dig(body, "last_commit", "commit", "commit_sha") or None
            for it in body["tree"]:
                if not isinstance(it, dict):
                    continue
                path = it.get("path")
                try:
                    path = names.rel_path(path, f"{what} file list")
                except names.UnsafeName as exc:
                    raise SourceError(self, "error", str(exc)) from None
                if path in seen:
                    continue
                seen.add(path)
                if len(seen) > MAX_FILES:
                    self.check_count(list(seen), what)
                if it.get("type") == "dir":
                    todo.append(path)
                elif it.get("type") == "file":
                    files.append(self._file(rid, rev, path, it, what))
        if not sha:
            raise SourceError(self, "error", f"{what}: the endpoint's answer has no commit sha")
        sha = self.commit(sha, what)
        return Listing(self.name, self.endpoint, ref.repo_id, rev, sha, files)

    def _file(self, rid: str, rev: str, path: str, it: dict, what: str) -> RemoteFile:
        # the etag is the sha256 of an LFS file and the git blob id of a small one; anything else is no
        # hash at all (names.sha256/git_oid give None), and the stage refuses the file unless
        # --allow-unverified
        etag = str(it.get("etag") or "").strip('"').lower()
        lfs = bool(it.get("is_lfs"))
        return self.file(path, it.get("size") or 0,
                         lambda p: f"{self.endpoint}/api/v1/file/{rid}/{_q(rev)}/media/{urllib.parse.quote(p)}",
                         what, sha256=etag if lfs else None, git_oid=None if lfs else etag)


def _dig(data: object, *keys: str) -> object:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _modelers_code(body: bytes) -> str:
    """The ``code`` of a Modelers error answer (``repo_not_exist``, ``ref_not_exist``, ...), or ""."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return ""  # a proxy's HTML page, not the hub's JSON: no code to report
    return str(data.get("code") or "") if isinstance(data, dict) else ""


def modelers_token(settings) -> Optional[str]:
    """``OPENMIND_HUB_TOKEN``, else the first line of ``sources.modelers_token_file``; never logged."""
    token = os.environ.get("OPENMIND_HUB_TOKEN", "").strip()
    path = settings.sources.modelers_token_file
    if token or not path:
        return token or None
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").split()
    except OSError as exc:
        raise StageError(f"sources.modelers_token_file {path}: cannot read it ({exc.strerror or exc})") from None
    return lines[0] if lines else None


def make_sources(settings, only: Optional[str] = None, token: Optional[str] = None) -> list[Source]:
    """The sources to ask, in order. ``token`` (else ``HF_TOKEN``) is sent to the HF endpoint only,
    for gated repos such as Llama; it is never written anywhere."""
    s = settings.sources
    order = list(dict.fromkeys(s.order)) or ["hf", "modelscope"]
    n = 1 if (only and only != "auto") else len(order)
    # "unreachable" must be reported within sources.timeout_s in total, also when every
    # source of --source auto is a black hole: split the budget between them (>= 2 s each)
    policy = Policy(timeout_s=float(s.timeout_s), retries=int(s.retries),
                    meta_timeout_s=max(2.0, float(s.timeout_s) / n),
                    backoff_s=float(os.environ.get("HPCFT_RETRY_BACKOFF_S") or 0.5),
                    max_json_bytes=int(float(s.max_listing_mb) * (1 << 20)), min_speed=float(s.min_speed_kbs) * 1000)
    hf = HFSource(os.environ.get("HF_ENDPOINT") or s.hf_endpoint, policy)
    set_token(hf.endpoint, token or os.environ.get("HF_TOKEN") or None)
    ms = ModelScopeSource(os.environ.get("MODELSCOPE_ENDPOINT") or s.modelscope_endpoint, policy)
    by: dict[str, Source] = {"hf": hf, "modelscope": ms}
    if only == "modelers" or "modelers" in order:
        by["modelers"] = ModelersSource(os.environ.get("OPENMIND_HUB_ENDPOINT") or s.modelers_endpoint, policy,
                                        modelers_token(settings))
    if only and only != "auto":
        return [by[only]]
    return [by[name] for name in order]
