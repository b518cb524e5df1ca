"""Putting a verified download into the cache so both hpcft and the HF libraries find it.

For each staged asset (``store.py`` has the base layout)::

    hf/hub/models--ORG--NAME/refs/{main,REV}       commit sha (what offline from_pretrained reads)
    hf/hub/models--ALIAS -> models--ORG--NAME      names users type (bert-base-uncased)
    hf/hub/datasets--ORG--NAME/...                 same for datasets (+ the shim, see offline_shim)
    metrics/ORG--NAME/SHA/NAME/                    the evaluate module (evaluate.load(path) works;
                                                   offline, the job's shim maps evaluate.load("NAME") to it)

Every write goes through :mod:`safefs` (descriptors, ``O_NOFOLLOW``, random temp names): the
cache may be shared by a Unix group whose members can plant links. Modes: see
:class:`safefs.Modes` (shared folders 3775, an asset's folders 2755 and files 0644 with a
``cache_group``; 0755/0644 without).
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..core import names as safe_names
from ..core.errors import StageError
from ..core.safefs import ME, O_NEW, Dir, Lock, Modes, owner_name, remove_tree, rename
from ..core.store import Cache, StagedAsset, admin_uids, asset_key

# where an older hpcft pointed jobs' run-time caches, inside the shared cache (datasets' arrow cache,
# evaluate's and transformers' module code, ModelScope's cache, compiled ops). They are per user now
# (hpcft.core.offline.private_runtime); `hpcft cache doctor` reports what is left here.
OLD_RUNTIME_DIRS = ("hf/datasets", "hf/modules", "hf/metrics", "modelscope", "ops")
TOP_DIRS = ("tmp", "locks", "manifests/model", "manifests/dataset", "manifests/metric", "metrics", "hf/hub")


def modes_for(settings) -> Modes:
    group = getattr(settings, "cache_group", None)
    if not group:
        return Modes(None)
    try:
        return Modes(grp.getgrnam(group).gr_gid)
    except KeyError:
        raise StageError(f"cache_group {group!r} is not a group on this machine (check `getent group "
                         f"{group}` and cache_group in the hpcft config)") from None


def cache_for(settings, root: Optional[Path] = None) -> Cache:
    return Cache(root if root is not None else settings.cache, admin_uids(settings))


def prepare_cache(cache: Cache, modes: Modes) -> None:
    """Create the cache's top folders; fail clearly when the cache is not writable or a folder
    in it is a planted link."""
    root = cache.root
    try:
        if not root.exists():
            try:
                root.mkdir(parents=True)
                with Dir.open_root(root) as r:
                    modes.apply(r.fd, modes.shared_dir, str(root))
            except FileExistsError:
                pass  # another stage process created it a moment ago: that is fine
        with Dir.open_root(root) as r:
            for sub in TOP_DIRS:
                r.sub(sub, create=True, modes=modes).close()
            with r.sub("tmp") as tmp:  # can we create there?
                name, probe = tmp.mkdtemp(".probe-")
                probe.close()
                os.rmdir(name, dir_fd=tmp.fd)
    except OSError as exc:
        raise StageError(f"cache dir {root} is not writable ({exc.strerror or exc}); choose another with "
                         "--cache DIR, HPCFT_CACHE or cache_dir in the hpcft config") from None


def lock(cache: Cache, kind: str, repo_id: str, config: Optional[str], *,
         on_wait: Optional[Callable] = None, timeout: Optional[float] = None) -> "_CacheLock":
    """The asset's lock (a context manager). While another process holds it, ``on_wait(seconds,
    where)`` is told how long it has waited, ``where`` naming the holder the first time (default:
    one line on stderr); after ``timeout`` seconds (default: the hpcft config's ``locks.wait_s``)
    it gives up with a :class:`StageError` naming the holder, before anything is written."""
    if timeout is None:
        from ..core.config import load_settings

        timeout = load_settings().locks.wait_s
    return _CacheLock(cache, cache.lock_path(kind, repo_id, config).name, on_wait or _waiting(timeout), timeout)


def _waiting(timeout: float) -> Callable[[float, str], None]:
    def say(seconds: float, where: str) -> None:
        import sys

        print(f"… lock {where}: waiting ({seconds:.0f} s so far; gives up after {timeout:g} s, locks.wait_s)",
              file=sys.stderr, flush=True)

    return say


class _CacheLock:
    def __init__(self, cache: Cache, name: str, on_wait, timeout):
        self.cache, self.name, self.on_wait, self.timeout = cache, name, on_wait, timeout

    def __enter__(self):
        self.root = Dir.open_root(self.cache.root)
        try:
            self.folder = self.root.sub("locks", create=True)
            self.lock = Lock(self.folder, self.name, on_wait=self.on_wait, timeout=self.timeout)
            self.lock.__enter__()
        except BaseException:
            self.root.close()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.__exit__(*exc)
        self.folder.close()
        self.root.close()


class PartFile:
    """A partial download inside a private staging folder, reached only through descriptors."""

    def __init__(self, folder: Dir, rel: str):
        self.folder, self.rel = folder, rel

    def __str__(self) -> str:
        return self.folder.join(self.rel)

    def size(self) -> int:
        st = self.folder.lstat(self.rel)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0

    def exists(self) -> bool:
        return self.folder.lstat(self.rel) is not None

    def remove(self) -> None:
        try:
            self.folder.unlink(self.rel)
        except FileNotFoundError:
            pass

    def open_append(self):
        fd = self.folder.open(self.rel, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600, create_dirs=True)
        return os.fdopen(fd, "ab", buffering=0)

    def open_read(self):
        return os.fdopen(self.folder.open(self.rel, os.O_RDONLY), "rb")


class Staging:
    """A private folder under ``tmp/`` (0700, ours, unpredictable name) for one asset's download.

    The prefix names the asset, source and commit; an earlier interrupted run's folder is resumed
    only when it is a real folder, ours and private. Its ``files/`` becomes the asset's folder."""

    def __init__(self, cache: Cache, modes: Modes, prefix: str):
        self.cache, self.modes = cache, modes
        root = Dir.open_root(cache.root)
        try:
            self.parent = root.sub("tmp", create=True, modes=modes)
        finally:
            root.close()
        self.name, self.dir = self._resume(prefix) or self.parent.mkdtemp(prefix + ".")
        self.files = self.dir.sub("files", create=True, shared=False)
        self.path = Path(self.files.path)

    def _resume(self, prefix: str) -> Optional[tuple[str, Dir]]:
        for name in sorted(self.parent.entries()):
            if name.startswith(prefix + "."):
                d = self.parent.own_private(name)
                if d is not None:
                    return name, d
        return None

    def part(self, rel: str) -> PartFile:
        return PartFile(self.files, rel)

    def read_text(self, rel: str) -> str:
        with PartFile(self.files, rel).open_read() as fh:
            return fh.read(64 << 20).decode("utf-8", "replace")

    def close(self) -> None:
        for d in (self.files, self.dir, self.parent):
            d.close()

    def remove(self) -> None:
        """Delete the staging folder (through descriptors) and close it."""
        self.files.close()
        self.dir.close()
        try:
            remove_tree(self.parent, self.name)
        except FileNotFoundError:
            pass
        self.parent.close()

    def prune_siblings(self, prefix: str) -> None:
        """Our own leftovers of the same asset from another source or commit."""
        for name in self.parent.entries():
            if name.startswith(prefix) and name != self.name:
                d = self.parent.own_private(name)
                if d is not None:
                    d.close()
                    remove_tree(self.parent, name)


def staging_prefix(kind: str, repo_id: str, config: Optional[str], source: str = "", sha: str = "") -> str:
    base = f"{kind}--{asset_key(kind, repo_id, config)}"
    return f"{base}--{source}-{sha[:12]}" if source else base


def install(cache: Cache, modes: Modes, kind: str, repo_id: str, sha: str, staging: Staging) -> Path:
    """Move a verified folder into its final place: one rename when new; merged file by file into a
    snapshot of our own (another config of the same dataset at the same commit); for a dataset
    whose snapshot folder belongs to another user, a folder of our own beside it. Anything else
    in the way is refused with the name of its owner."""
    rel = cache.asset_rel(kind, repo_id, sha)
    parent_rel, name = rel.rsplit("/", 1)
    staging.files.fix_tree(modes)
    candidates = [name, f"{name}.u{ME}"] if kind == "dataset" else [name]
    with Dir.open_root(cache.root) as root, root.sub(parent_rel, create=True, modes=modes) as parent:
        for cand in candidates:
            st = parent.lstat(cand)
            if st is None:
                try:
                    rename(staging.dir, "files", parent, cand)
                    return Path(parent.join(cand))
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    st = parent.lstat(cand)
            if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == ME:
                with parent.sub(cand, shared=False) as final:
                    _merge(staging.files, final, modes)
                return Path(parent.join(cand))
        who = owner_name(st.st_uid) if st is not None else "another user"
        raise StageError(f"{parent.join(name)}: already exists and belongs to {who}, but no manifest of theirs "
                         f"describes it; refused. Ask {who} or the cache admin to remove it (hpcft cache doctor "
                         "lists such folders)")


def _merge(src: Dir, final: Dir, modes: Modes) -> None:
    from ..core.store import sha256_fd

    for rel in sorted(src.walk_files()):
        head = rel.rpartition("/")[0]
        dst = final.sub(head, create=True, modes=modes, shared=False) if head else None
        try:
            target = dst or final
            base = rel.rpartition("/")[2]
            st = target.lstat(base)
            if st is not None:
                same = False
                if stat.S_ISREG(st.st_mode) and st.st_uid == ME:
                    with PartFile(target, base).open_read() as a, PartFile(src, rel).open_read() as b:
                        same = sha256_fd(a) == sha256_fd(b)
                if same:
                    src.unlink(rel)
                    continue
                remove_tree(target, base)  # ours to replace: the folder is ours
            with (src.sub(head, shared=False) if head else Dir(os.dup(src.fd), src.path)) as sdir:
                rename(sdir, base, target, base)
        finally:
            if dst is not None:
                dst.close()


def write_ref(cache: Cache, modes: Modes, kind: str, repo_id: str, revision: str, sha: str) -> list[str]:
    """``refs/main`` (and the asked revision) -> sha. Returns warnings (a ref another user owns)."""
    if kind == "metric":
        return []
    repo_rel = cache.asset_rel(kind, repo_id, sha).rsplit("/snapshots/", 1)[0]
    warnings = []
    with Dir.open_root(cache.root) as root:
        for name in {revision, "main"} if revision in ("main", "master") or revision == sha else {revision}:
            if name == sha:
                continue
            head, _, base = f"refs/{name}".rpartition("/")
            with root.sub(f"{repo_rel}/{head}", create=True, modes=modes) as folder:
                try:
                    folder.write_atomic(base, sha.encode(), modes)
                except StageError as exc:
                    warnings.append(str(exc))
    return warnings


def link_aliases(cache: Cache, modes: Modes, kind: str, repo_id: str, names: Iterable[str]) -> list[str]:
    """``models--bert-base-uncased -> models--google-bert--bert-base-uncased`` for hub-style names.

    Returns problems: a name already taken by a link that leads out of the hub folder (another
    user's plant; an unmodified script's ``from_pretrained(name)`` on the node would follow it)."""
    if kind == "metric":
        return []
    problems = []
    real = cache.asset_rel(kind, repo_id, "x").split("/")[2]
    with Dir.open_root(cache.root) as root, root.sub("hf/hub", create=True, modes=modes) as hub:
        for name in names:
            try:
                safe_names.repo_id(name, "alias")
            except StageError:
                continue  # config-bearing or path-like names get no hub-layout link
            if name == repo_id:
                continue
            link = cache.asset_rel(kind, name, "x").split("/")[2]
            if link == real:
                continue
            st = hub.lstat(link)
            if st is not None and stat.S_ISLNK(st.st_mode):
                target = os.readlink(link, dir_fd=hub.fd)
                if target != real and ("/" in target or hub.lstat(target) is None):
                    problems.append(f"{hub.join(link)} is a link to {target!r}, made by {owner_name(st.st_uid)}: a "
                                    f"job's from_pretrained/load_dataset({name!r}) on the node would load that, "
                                    "not what you staged. Ask them or the cache admin to remove it (hpcft cache "
                                    f"doctor lists it); meanwhile use {repo_id!r}")
                continue  # ours, or an alias to another staged repo: leave it
            if st is not None:
                continue  # a real repo of that name: leave it
            try:
                hub.symlink(real, link)
            except OSError:
                continue  # another user's entry appeared meanwhile (sticky folder): theirs stays
    return problems


def _rel(cache: Cache, path: Path) -> str:
    from ..core.safefs import rel_parts

    return rel_parts(path, cache.root)


def _touch(folder: Dir, name: str, modes: Modes) -> None:
    try:
        fd = os.open(name, O_NEW, 0o644, dir_fd=folder.fd)
    except FileExistsError:
        return
    try:
        modes.apply(fd, modes.file, folder.join(name))
    finally:
        os.close(fd)


def _write_new(folder: Dir, name: str, data: bytes, modes: Modes) -> None:
    fd = os.open(name, O_NEW, 0o600, dir_fd=folder.fd)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def register_local(cache: Cache, kind: str, repo_id: str, folder: Path, *, config: Optional[str] = None,
                   aliases: Iterable[str] = (), source: str = "local", modes: Optional[Modes] = None
                   ) -> StagedAsset:
    """Stage a local folder (a model dir, a dataset folder, a metric module) under a name.

    Copied into a private temporary folder inside the cache, hashed, renamed into place, then the
    manifest is written: a crash at any point leaves nothing visible as staged.
    """
    from ..core.store import sha256_fd

    modes = modes or Modes()
    folder = Path(folder)
    prepare_cache(cache, modes)
    with lock(cache, kind, repo_id, config):
        staging = Staging(cache, modes, staging_prefix(kind, repo_id, config) + "--local")
        try:
            files = []
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                for fname in sorted(filenames):
                    src = Path(dirpath, fname)
                    rel = src.relative_to(folder).as_posix()
                    if not src.is_file():
                        continue
                    part = staging.part(rel)
                    with open(src, "rb") as fin, part.open_append() as out:
                        while chunk := fin.read(1 << 20):
                            out.write(chunk)
                    with part.open_read() as fh:
                        files.append({"path": rel, "size": src.stat().st_size, "sha256": sha256_fd(fh)})
            files.sort(key=lambda f: f["path"])
            sha = hashlib.sha256("".join(f"{f['path']}:{f['sha256']}" for f in files).encode()).hexdigest()[:40]
            final = install(cache, modes, kind, repo_id, sha, staging)
            manifest = cache.write_manifest(kind, repo_id, config, final, source=source, endpoint=None,
                                            revision=None, sha=sha, files=files, aliases=aliases,
                                            extra={"local_source": str(folder.resolve())}, modes=modes)
        finally:
            staging.remove()
    return StagedAsset(kind, repo_id, config, final, manifest)
