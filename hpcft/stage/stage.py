"""``hpcft stage``: fetch what a job needs into the shared cache, safely.

Per asset: (1) already staged -> reuse; (2) take the per-asset lock (a second
``hpcft stage`` of the same asset waits here, then reuses); (3) ask each source in
order for the file list and fall back on failure; (4) download only the needed files
into ``tmp/`` inside the cache (resumable, verified while streaming); (5) rename into
place, write refs and alias entries, and the manifest last. No manifest, not staged.
"""

from __future__ import annotations

import errno
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from ..errors import StageError
from . import layout, select
from .cards import sync_staged_configs
from .http import HTTPFailure, Unreachable, VerifyError, download
from .progress import Progress, human
from .resolve import AliasTable, AssetRef
from .sources import Listing, RemoteFile, Source, SourceError, make_sources
from .store import Cache, StagedAsset, register_local, sha256_file


@dataclass
class StageOptions:
    source: str = "auto"
    revision: Optional[str] = None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    tty: Optional[bool] = None
    token: Optional[str] = field(default=None, repr=False)  # HF token (else HF_TOKEN); never stored


@dataclass
class StageResult:
    kind: str
    repo_id: str
    config: Optional[str]
    typed: str
    status: str                   # staged | cached | local
    path: str
    sha: Optional[str] = None
    source: Optional[str] = None
    endpoint: Optional[str] = None
    files: int = 0
    bytes: int = 0                # bytes in the staged asset
    fetched: int = 0              # bytes downloaded by this run
    seconds: float = 0.0
    skipped: list[dict] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)

    @property
    def saved(self) -> int:
        return sum(s["size"] for s in self.skipped)

    def to_json(self) -> dict:
        return {**asdict(self), "saved_bytes": self.saved}


class _Ctx:
    def __init__(self, settings, cache: Cache, table: AliasTable, opts: StageOptions):
        self.settings, self.cache, self.table, self.opts = settings, cache, table, opts
        self.perms = layout.Perms.from_settings(settings)
        self.sources = make_sources(settings, opts.source, opts.token)
        # evaluate metrics live on the HF endpoint only (ModelScope and Modelers host none)
        self.metric_sources = [s for s in self.sources if s.name == "hf"] or make_sources(settings, "hf", opts.token)
        self.parallel = settings.sources.parallel

    def say(self, line: str) -> None:
        if not self.opts.quiet:
            print(line, file=self.opts.stream, flush=True)


def stage(refs: list[AssetRef], settings, cache_root: Path, table: AliasTable,
          opts: Optional[StageOptions] = None) -> list[StageResult]:
    opts = opts or StageOptions()
    cache = Cache(cache_root)
    ctx = _Ctx(settings, cache, table, opts)
    layout.prepare_cache(cache, ctx.perms)
    return [stage_one(ref, ctx) for ref in refs]


def _alias_names(ref: AssetRef, table: AliasTable) -> list[str]:
    """Names for hub-layout symlinks: the table's names; for models also the typed name
    (a legacy id such as ``bert-base-uncased``). Never config-bearing names like glue/mrpc."""
    names = list(table.names_for(ref.kind, ref.repo_id))
    if ref.kind == "model":
        names.append(ref.typed)
    return names


def _satisfies(asset: StagedAsset, revision: Optional[str]) -> bool:
    m = asset.manifest
    return revision is None or revision in (m.get("revision"), m.get("sha")) or \
        (len(revision) >= 7 and str(m.get("sha", "")).startswith(revision))


def _cached(ref: AssetRef, ctx: _Ctx) -> Optional[StageResult]:
    asset = ctx.cache.find(ref.kind, ref.repo_id, ref.config) or ctx.cache.find(ref.kind, ref.typed, ref.config)
    if asset is None or not _satisfies(asset, ctx.opts.revision):
        return None
    m = asset.manifest
    new = set(ref.names) - set(m.get("aliases", [])) - {asset.repo_id}
    if new:  # remember the new name (and make it resolvable offline)
        keep = {k: v for k, v in m.items() if k not in ("kind", "repo_id", "config", "aliases", "source",
                                                           "endpoint", "revision", "sha", "path", "files",
                                                           "size", "staged_at", "hpcft_version")}
        m = ctx.cache.write_manifest(asset.kind, asset.repo_id, asset.config, asset.path, source=m["source"],
                                     endpoint=m.get("endpoint"), revision=m.get("revision"), sha=m["sha"],
                                     files=m["files"], aliases=[*m.get("aliases", []), *new], extra=keep)
        layout.link_aliases(ctx.cache, ref.kind, asset.repo_id, _alias_names(ref, ctx.table))
    return StageResult(ref.kind, asset.repo_id, asset.config, ref.typed, "cached", str(asset.path),
                       sha=m.get("sha"), source=m.get("source"), endpoint=m.get("endpoint"),
                       files=len(m.get("files", [])), bytes=int(m.get("size", 0)),
                       skipped=list(m.get("skipped", [])))


def stage_one(ref: AssetRef, ctx: _Ctx) -> StageResult:
    if ref.local is not None:
        return _stage_local(ref, ctx)
    hit = _cached(ref, ctx)
    if hit:
        ctx.say(f"✓ {ref.kind} {ref.label}: already staged ({hit.source}, {str(hit.sha)[:12]}) at {hit.path}")
        return hit
    with _asset_lock(ctx, ref):
        hit = _cached(ref, ctx)  # someone else staged it while we waited
        if hit:
            ctx.say(f"✓ {ref.kind} {ref.label}: staged by another process ({str(hit.sha)[:12]}) at {hit.path}")
            return hit
        return _stage_remote(ref, ctx)


class _asset_lock:
    def __init__(self, ctx: _Ctx, ref: AssetRef):
        from filelock import FileLock, Timeout

        self.ctx, self.ref, self.Timeout = ctx, ref, Timeout
        path = ctx.cache.lock_path(ref.kind, ref.repo_id, ref.config)
        ctx.perms.makedirs(path.parent, ctx.cache.root)
        self.lock = FileLock(str(path), mode=0o664)

    def __enter__(self):
        waited = 0.0
        while True:
            try:
                self.lock.acquire(timeout=2 if waited == 0 else 30)
                return self
            except self.Timeout:
                waited += 2 if waited == 0 else 30
                self.ctx.say(f"… {self.ref.kind} {self.ref.label}: another hpcft stage is fetching it; "
                             f"waiting ({waited:.0f} s, lock {self.lock.lock_file})")

    def __exit__(self, *exc):
        self.lock.release()


def _stage_local(ref: AssetRef, ctx: _Ctx) -> StageResult:
    assert ref.local is not None
    if ref.local.is_file():
        ctx.say(f"✓ {ref.kind} {ref.typed}: a local file, used in place")
        return StageResult(ref.kind, ref.repo_id, None, ref.typed, "local", str(ref.local),
                           files=1, bytes=ref.local.stat().st_size)
    t0 = time.monotonic()
    asset = register_local(ctx.cache, ref.kind, ref.repo_id, ref.local, aliases=ref.names)
    ctx.perms.tree(asset.path)
    if ref.kind == "metric":
        layout.install_metric_module(ctx.cache, ctx.perms, ref.repo_id, asset.path)
    m = asset.manifest
    ctx.say(f"✓ {ref.kind} {ref.typed}: copied into the cache ({len(m['files'])} files, {human(m['size'])}) "
            f"at {asset.path}")
    return StageResult(ref.kind, ref.repo_id, None, ref.typed, "local", str(asset.path), sha=m["sha"],
                       source="local", files=len(m["files"]), bytes=m["size"], seconds=time.monotonic() - t0)


def _failure(ref: AssetRef, errors: list[SourceError]) -> StageError:
    what = f"{ref.kind} {ref.label}"
    said = "; ".join(e.line() for e in errors)
    kinds = {e.kind for e in errors}
    if kinds == {"revision"} or ("revision" in kinds and kinds <= {"revision", "not_found"}):
        hint = "check --revision (a branch, tag or commit of that repo)"
    elif kinds == {"unreachable"}:
        hint = " or ".join(f"{e.source.env_var} / {e.source.config_key}" for e in errors)
        hint = f"check the network from this node, or point {hint} (hpcft config) at a reachable mirror"
    elif "not_found" in kinds:
        hint = "check the name (org/name as on the hub, or a name from hpcft/stage/aliases.yaml)"
        if ref.kind != "metric" and "modelers" not in {e.source.name for e in errors}:
            hint += "; for an id on the Modelers (openMind) hub add --source modelers"
    else:
        hint = "try again later, or another source with --source"
    return StageError(f"{what}: could not be staged. Asked {said}. What to do: {hint}")


def _stage_remote(ref: AssetRef, ctx: _Ctx) -> StageResult:
    errors: list[SourceError] = []
    sources = ctx.metric_sources if ref.kind == "metric" else ctx.sources
    for src in sources:
        try:
            listing = src.listing(ref, ctx.opts.revision)
        except SourceError as exc:
            errors.append(exc)
            if src is not sources[-1]:
                ctx.say(f"  {ref.kind} {ref.label}: {exc.line()}; trying the next source")
            continue
        try:
            return _fetch(ref, ctx, src, listing, [e.line() for e in errors])
        except _SourceFailed as exc:
            errors.append(SourceError(src, "error", str(exc)))
            if src is not sources[-1]:
                ctx.say(f"  {ref.kind} {ref.label}: {errors[-1].line()}; trying the next source")
    raise _failure(ref, errors)


class _SourceFailed(Exception):
    pass


def _fetch(ref: AssetRef, ctx: _Ctx, src: Source, listing: Listing, tried: list[str]) -> StageResult:
    cache, perms = ctx.cache, ctx.perms
    t0 = time.monotonic()
    tmp = layout.tmp_dir(cache, ref.kind, listing.repo_id, ref.config, src.name, listing.sha)
    staging = tmp / "files"
    perms.makedirs(staging, cache.root)
    by_path = listing.by_path()
    try:
        wanted, pre = _select(ref, ctx, src, listing, staging)
        todo = [by_path[p] for p in sorted(wanted)]
        skipped = [{"path": f.path, "size": f.size} for f in listing.files if f.path not in wanted]
        _check_space(cache, todo, staging)
        nbytes = sum(f.size for f in todo)
        ctx.say(f"↓ {ref.kind} {ref.label} from {src.name} {src.endpoint} @ {listing.sha[:12]}: "
                f"{len(todo)} files, {human(nbytes)}"
                + (f"; skipping {len(skipped)} files ({human(sum(s['size'] for s in skipped))}): "
                   + ", ".join(s["path"] for s in skipped[:8]) + (" …" if len(skipped) > 8 else "")
                   if skipped else ""))
        fetched, digests = _download_all(ref, ctx, todo, staging, headers=src.headers())
        fetched += pre
        # anything else lying in the folder (an older selection) is not part of the asset
        for p in sorted(staging.rglob("*"), reverse=True):
            rel = p.relative_to(staging).as_posix()
            if p.is_file() and rel not in wanted:
                p.unlink()
        # sha256 as computed while streaming (and checked against the listing): no second read
        files = [{"path": f.path, "size": f.size, "sha256": digests[f.path]} for f in todo]
        final = layout.install(cache, perms, ref.kind, listing.repo_id, listing.sha, staging)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            shutil.rmtree(tmp, ignore_errors=True)
            raise StageError(f"{ref.kind} {ref.label}: disk full while writing to {cache.root} "
                             f"({exc.strerror}); the partial download was removed. Free space there, or "
                             "stage into another cache with --cache DIR / HPCFT_CACHE") from None
        raise StageError(f"{ref.kind} {ref.label}: cannot write {getattr(exc, 'filename', '') or cache.root} "
                         f"({exc.strerror or exc}); check the cache dir's permissions or use --cache DIR") from None
    layout.write_ref(cache, perms, ref.kind, listing.repo_id, listing.revision, listing.sha)
    if ref.kind == "dataset":  # only some configs here: tell `datasets` which (cards.py says why)
        card = sync_staged_configs(final, cache.root / "locks")
        if card is not None:
            perms.file(card)
    names = [*ref.names]
    if listing.repo_id != ref.repo_id:
        names.append(ref.repo_id)
    # the hub's own name, when it differs (google-bert/bert-base-cased is PyTorch-NPU/bert_base_cased on
    # Modelers): openmind_hub's offline lookups use it
    hub_name = ref.om_id if src.name == "modelers" and ref.om_id and ref.om_id != listing.repo_id else None
    if hub_name:
        names.append(hub_name)
    layout.link_aliases(cache, ref.kind, listing.repo_id, [*_alias_names(ref, ctx.table),
                                                          *([ref.repo_id] if listing.repo_id != ref.repo_id else []),
                                                          *([hub_name] if hub_name else [])])
    extra = {"skipped": skipped, "typed": ref.typed}
    if ref.kind == "metric":
        mod = layout.install_metric_module(cache, perms, listing.repo_id, final)
        extra["evaluate_module"] = str(mod) if mod else None
    manifest = cache.write_manifest(ref.kind, listing.repo_id, ref.config, final, source=src.name,
                                    endpoint=src.endpoint, revision=listing.revision, sha=listing.sha,
                                    files=files, aliases=names, extra=extra)
    perms.file(cache.manifest_path(ref.kind, listing.repo_id, ref.config))
    shutil.rmtree(tmp, ignore_errors=True)
    for other in cache.tmp.glob(f"{ref.kind}--{tmp.name.split('--', 1)[1].rsplit('--', 1)[0]}--*"):
        shutil.rmtree(other, ignore_errors=True)  # leftovers from another source/commit
    secs = time.monotonic() - t0
    res = StageResult(ref.kind, listing.repo_id, ref.config, ref.typed, "staged", str(final), sha=listing.sha,
                      source=src.name, endpoint=src.endpoint, files=len(files), bytes=manifest["size"],
                      fetched=fetched, seconds=secs, skipped=skipped, tried=tried)
    rate = fetched / secs if secs > 0 else 0.0
    ctx.say(f"✓ {ref.kind} {ref.label}: {len(files)} files, {human(res.bytes)} in {secs:.1f} s "
            f"({human(rate)}/s){f', saved {human(res.saved)} by skipping {len(skipped)} files' if skipped else ''}"
            f" -> {final}")
    return res


def _select(ref: AssetRef, ctx: _Ctx, src: Source, listing: Listing, staging: Path) -> tuple[set[str], int]:
    """(the files to stage, bytes fetched to decide: a dataset's card)."""
    paths = [f.path for f in listing.files]
    if ref.kind == "model":
        shards, pre = None, 0
        index = listing.by_path().get(select.SAFETENSORS_INDEX)
        if index is not None:  # a sharded checkpoint: fetch exactly the shards its index names
            pre, _ = _download_all(ref, ctx, [index], staging, quiet=True)
            shards = select.shards_of((staging / index.path).read_text(encoding="utf-8", errors="replace"))
        wanted = select.select_model(paths, shards)
        if not any(p.endswith((".safetensors", ".bin", ".pth", ".pt")) for p in wanted):
            raise StageError(f"model {ref.label}: the repo has no PyTorch weights (safetensors or .bin); "
                             f"files: {', '.join(paths[:12])}")
        return wanted, pre
    if ref.kind == "metric":
        wanted = select.select_metric(paths, listing.repo_id.split("/")[-1])
        if not wanted:
            raise StageError(f"metric {ref.label}: no evaluate module in the repo ({', '.join(paths[:8])})")
        return wanted, 0
    readme, pre = None, 0
    if "README.md" in listing.by_path():
        pre, _ = _download_all(ref, ctx, [listing.by_path()["README.md"]], staging, quiet=True,
                               headers=src.headers())  # its configs
        readme = (staging / "README.md").read_text(encoding="utf-8", errors="replace")
    wanted, configs = select.select_dataset(paths, readme, ref.config)
    if not wanted or not any(p not in select.DATASET_META for p in wanted):
        if ref.config and ref.config not in configs:
            raise StageError(f"dataset {ref.repo_id}: unknown config {ref.config!r}; available: "
                             f"{', '.join(configs) or '(none)'}")
        if len(configs) > 1 and not ref.config:
            raise StageError(f"dataset {ref.repo_id} has several configs; name one: {', '.join(configs)} "
                             f"(e.g. {ref.repo_id}:{configs[0]})")
        raise StageError(f"dataset {ref.label}: no data files found in the repo")
    return wanted, pre


def _check_space(cache: Cache, todo: list[RemoteFile], staging: Path) -> None:
    have = sum((staging / f.path).stat().st_size for f in todo if (staging / f.path).exists())
    need = sum(f.size for f in todo) - have
    free = shutil.disk_usage(cache.root).free
    if need > free:
        raise OSError(errno.ENOSPC, f"needs {human(need)} more, {human(free)} free")


def _download_all(ref: AssetRef, ctx: _Ctx, todo: list[RemoteFile], staging: Path,
                  quiet: bool = False, headers: Optional[dict] = None) -> tuple[int, dict[str, str]]:
    """Fetch ``todo`` in parallel into ``staging``; (bytes fetched now, {path: sha256})."""
    policy = ctx.sources[0].policy
    stop = threading.Event()
    total = sum(f.size for f in todo)
    prog = Progress(f"{ref.kind} {ref.label}", total, len(todo), stream=ctx.opts.stream,
                    quiet=quiet or ctx.opts.quiet or total < 1, tty=ctx.opts.tty)
    fetched = [0]
    digests: dict[str, str] = {}
    lock = threading.Lock()

    def one(f: RemoteFile) -> None:
        part = staging / (f.path + ".part")
        dest = staging / f.path
        if dest.exists() and dest.stat().st_size == f.size and not part.exists():
            digest = sha256_file(dest)  # finished by an earlier, interrupted run: check again
            if digest == f.sha256 or (not f.sha256 and _git_ok(dest, f.git_oid)):
                with lock:
                    digests[f.path] = digest
                prog.add(f.path, f.size)
                prog.file_done(f.path)
                return
            dest.unlink()
        ctx.perms.makedirs(part.parent, staging)
        prog.file_started(f.path, f.size)
        before = part.stat().st_size if part.exists() else 0

        def on_bytes(n: int) -> None:
            prog.add(f.path, n)

        try:
            digest = download(f.url, part, size=f.size, sha256=f.sha256, git_oid=f.git_oid, policy=policy,
                     on_bytes=on_bytes, stop=stop, headers=headers)
        except VerifyError as exc:
            raise _SourceFailed(f"{f.path}: {exc} (the mirror served a corrupt file)") from None
        except HTTPFailure as exc:
            raise _SourceFailed(f"{f.path}: HTTP {exc.status} {exc.message()}".strip()) from None
        except Unreachable as exc:
            raise _SourceFailed(f"{f.path}: connection failed ({exc}) after {policy.retries} retries; "
                                "run the same command again to resume") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            raise _SourceFailed(f"{f.path}: {exc} after {policy.retries} retries; run the same command "
                                "again to resume") from None
        ctx.perms.file(part)
        part.replace(dest)
        with lock:
            fetched[0] += f.size - before
            digests[f.path] = digest
        prog.file_done(f.path)

    with prog, ThreadPoolExecutor(max_workers=max(1, min(ctx.parallel, len(todo) or 1))) as pool:
        futures = [pool.submit(one, f) for f in todo]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                if fut.done() and fut.exception() is not None:
                    stop.set()
                    raise fut.exception()
        except BaseException:
            stop.set()
            for fut in futures:
                fut.cancel()
            raise
    return fetched[0], digests


def _git_ok(path: Path, git_oid: Optional[str]) -> bool:
    if not git_oid:
        return True
    from .http import git_blob_sha1_prefix

    h = git_blob_sha1_prefix(path.stat().st_size)
    h.update(path.read_bytes())
    return h.hexdigest() == git_oid
