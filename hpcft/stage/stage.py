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

from ..core import names
from ..core.errors import StageError
from ..core.resolve import AliasTable, AssetRef
from ..core.safefs import ME, owner_name
from ..core.store import Cache, StagedAsset, sha256_fd
from . import layout, lf_media, recheck, select
from .cards import sync_staged_configs
from .http import HTTPFailure, Unreachable, VerifyError, download, git_blob_sha1_prefix
from .progress import Progress, human
from .sources import Listing, RemoteFile, Source, SourceError, make_sources


@dataclass
class StageOptions:
    source: str = "auto"
    revision: Optional[str] = None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    tty: Optional[bool] = None
    token: Optional[str] = field(default=None, repr=False)  # HF token (else HF_TOKEN); never stored
    allow_unverified: bool = False  # accept files the listing gives no hash for (recorded in the manifest)
    cross_check: bool = False       # compare the hashes another configured source lists before installing
    # LLaMA-Factory datasets whose rows name media: typed dataset name -> what to fetch with it (lf_media.py)
    media: dict = field(default_factory=dict)


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
        self.modes = layout.modes_for(settings)
        self.sources = make_sources(settings, opts.source, opts.token)
        # evaluate metrics live on the HF endpoint only (ModelScope and Modelers host none)
        self.metric_sources = [s for s in self.sources if s.name == "hf"] or make_sources(settings, "hf", opts.token)
        self.parallel = settings.sources.parallel
        self.problems: list[str] = []

    def say(self, line: str) -> None:
        if not self.opts.quiet:
            print(line, file=self.opts.stream, flush=True)


def stage(refs: list[AssetRef], settings, cache_root: Path, table: AliasTable,
          opts: Optional[StageOptions] = None) -> list[StageResult]:
    opts = opts or StageOptions()
    if opts.revision is not None:
        names.revision(opts.revision, "--revision")
    cache = layout.cache_for(settings, Path(cache_root))
    ctx = _Ctx(settings, cache, table, opts)
    layout.prepare_cache(cache, ctx.modes)
    results = [stage_one(ref, ctx) for ref in refs]
    if ctx.problems:  # staged, but a name users type leads elsewhere: say so and exit non-zero
        raise StageError("staged, but " + "; ".join(dict.fromkeys(ctx.problems)))
    return results


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
    want = _media_request(ref, ctx)
    if want is not None and not set(want.key) <= set(m.get("lf_media", [])):
        ctx.say(f"  {ref.kind} {ref.label}: staged without the media its rows name; fetching them")
        return None
    owner = m.get("_owner", ME)
    changed = recheck.changed_files(asset)
    if changed:
        label = f"{ref.kind} {ref.label}"
        if owner != ME:
            who = owner_name(owner)
            raise StageError(f"{label}: staged by {who}, but its files no longer match the manifest "
                             f"({'; '.join(changed[:3])}); ask {who} or the cache admin to run `hpcft cache rm "
                             f"{ref.typed}`, then stage it again")
        ctx.say(f"! {label}: the staged files no longer match the manifest ({'; '.join(changed[:3])}); "
                "staging it again")
        return None
    if owner not in (ME, 0, *ctx.cache.admins):  # another user's copy: check it once, as they could change it
        sources = ctx.metric_sources if ref.kind == "metric" else ctx.sources
        note = recheck.check_foreign(asset, sources, ctx.cache, ref.typed)
        if note:
            ctx.say(f"  {ref.kind} {ref.label}: {note}")
    new = set(ref.names) - set(m.get("aliases", [])) - {asset.repo_id}
    if new and owner == ME:  # remember the new name (and make it resolvable offline)
        keep = {k: v for k, v in m.items() if k not in ("kind", "repo_id", "config", "aliases", "source",
                                                           "endpoint", "revision", "sha", "path", "files",
                                                           "size", "staged_at", "hpcft_version")}
        m = ctx.cache.write_manifest(asset.kind, asset.repo_id, asset.config, asset.path, source=m["source"],
                                     endpoint=m.get("endpoint"), revision=m.get("revision"), sha=m["sha"],
                                     files=m["files"], aliases=[*m.get("aliases", []), *new], extra=keep,
                                     modes=ctx.modes)
    ctx.problems += layout.link_aliases(ctx.cache, ctx.modes, ref.kind, asset.repo_id, _alias_names(ref, ctx.table))
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


def _asset_lock(ctx: _Ctx, ref: AssetRef):
    def waiting(seconds: float, path: str) -> None:
        ctx.say(f"… {ref.kind} {ref.label}: another hpcft stage is fetching it; waiting ({seconds:.0f} s, "
                f"lock {path})")

    return layout.lock(ctx.cache, ref.kind, ref.repo_id, ref.config, on_wait=waiting)


def _stage_local(ref: AssetRef, ctx: _Ctx) -> StageResult:
    assert ref.local is not None
    if ref.local.is_file():
        ctx.say(f"✓ {ref.kind} {ref.typed}: a local file, used in place")
        return StageResult(ref.kind, ref.repo_id, None, ref.typed, "local", str(ref.local),
                           files=1, bytes=ref.local.stat().st_size)
    t0 = time.monotonic()
    asset = layout.register_local(ctx.cache, ref.kind, ref.repo_id, ref.local, aliases=ref.names, modes=ctx.modes)
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
        hint = "check the name (org/name as on the hub, or a name from hpcft/core/aliases.yaml)"
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
    cache, modes = ctx.cache, ctx.modes
    t0 = time.monotonic()
    prefix = layout.staging_prefix(ref.kind, listing.repo_id, ref.config, src.name, listing.sha)
    try:
        staging = layout.Staging(cache, modes, prefix)
    except OSError as exc:
        raise StageError(f"{ref.kind} {ref.label}: cannot create a temporary folder in {cache.tmp} "
                         f"({exc.strerror or exc}); check the cache dir's permissions or use --cache DIR") from None
    by_path = listing.by_path()
    try:
        wanted, pre = _select(ref, ctx, src, listing, staging)
        media = _media_request(ref, ctx)
        if media is not None:   # the images/videos/audios its rows name, read from its fetched data files
            rows = sorted(p for p in wanted if p not in select.DATASET_META)
            got, _ = _download_all(ref, ctx, [by_path[p] for p in rows], staging, quiet=True, headers=src.headers())
            pre += got
            wanted |= lf_media.hub_media(media, f"{listing.repo_id}@{listing.sha[:12]}", by_path, rows,
                                         lambda p: staging.part(p).open_read())
        todo = [by_path[p] for p in sorted(wanted)]
        unverified = [f.path for f in todo if not f.verified]
        if unverified and not ctx.opts.allow_unverified:
            raise _SourceFailed(f"the file list gives no hash for {', '.join(unverified[:5])}"
                                f"{' …' if len(unverified) > 5 else ''}, so the bytes could not be verified; "
                                "refused (--allow-unverified accepts such files and records them in the manifest)")
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
        for rel in list(staging.files.walk_files()):
            if rel not in wanted:
                staging.files.unlink(rel)
        if ctx.opts.cross_check:
            _cross_check(ref, ctx, src, todo, digests, staging)
        # sha256 as computed while streaming (and checked against the listing): no second read
        files = [{"path": f.path, "size": f.size, "sha256": digests[f.path]} for f in todo]
        final = layout.install(cache, modes, ref.kind, listing.repo_id, listing.sha, staging)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            staging.remove()
            raise StageError(f"{ref.kind} {ref.label}: disk full while writing to {cache.root} "
                             f"({exc.strerror}); the partial download was removed. Free space there, or "
                             "stage into another cache with --cache DIR / HPCFT_CACHE") from None
        staging.close()
        raise StageError(f"{ref.kind} {ref.label}: cannot write {getattr(exc, 'filename', '') or cache.root} "
                         f"({exc.strerror or exc}); check the cache dir's permissions or use --cache DIR") from None
    except BaseException:
        staging.close()
        raise
    for warning in layout.write_ref(cache, modes, ref.kind, listing.repo_id, listing.revision, listing.sha):
        ctx.say(f"! {ref.kind} {ref.label}: {warning}")
    if ref.kind == "dataset":  # only some configs here: tell `datasets` which (cards.py says why)
        sync_staged_configs(cache, final, modes)
    names_ = [*ref.names]
    if listing.repo_id != ref.repo_id:
        names_.append(ref.repo_id)
    # the hub's own name, when it differs (google-bert/bert-base-cased is PyTorch-NPU/bert_base_cased on
    # Modelers): openmind_hub's offline lookups use it
    hub_name = ref.om_id if src.name == "modelers" and ref.om_id and ref.om_id != listing.repo_id else None
    if hub_name:
        names_.append(hub_name)
    ctx.problems += layout.link_aliases(cache, modes, ref.kind, listing.repo_id,
                        [*_alias_names(ref, ctx.table), *([ref.repo_id] if listing.repo_id != ref.repo_id else []),
                         *([hub_name] if hub_name else [])])
    extra: dict = {"skipped": skipped, "typed": ref.typed}
    if media is not None:
        extra["lf_media"] = media.key
    if unverified:
        extra["unverified"] = unverified
    if ctx.opts.cross_check:
        extra["cross_checked"] = True
    manifest = cache.write_manifest(ref.kind, listing.repo_id, ref.config, final, source=src.name,
                                    endpoint=src.endpoint, revision=listing.revision, sha=listing.sha,
                                    files=files, aliases=names_, extra=extra, modes=modes)
    staging.prune_siblings(layout.staging_prefix(ref.kind, listing.repo_id, ref.config) + "--")
    staging.remove()
    secs = time.monotonic() - t0
    res = StageResult(ref.kind, listing.repo_id, ref.config, ref.typed, "staged", str(final), sha=listing.sha,
                      source=src.name, endpoint=src.endpoint, files=len(files), bytes=manifest["size"],
                      fetched=fetched, seconds=secs, skipped=skipped, tried=tried)
    rate = fetched / secs if secs > 0 else 0.0
    ctx.say(f"✓ {ref.kind} {ref.label}: {len(files)} files, {human(res.bytes)} in {secs:.1f} s "
            f"({human(rate)}/s){f', saved {human(res.saved)} by skipping {len(skipped)} files' if skipped else ''}"
            f"{f', {len(unverified)} unverified (--allow-unverified)' if unverified else ''} -> {final}")
    return res


def _cross_check(ref: AssetRef, ctx: _Ctx, src: Source, todo: list[RemoteFile], digests: dict[str, str],
                 staging: layout.Staging) -> None:
    """``--cross-check``: every file's bytes must match what a second configured source lists for the
    same repo, so that one hostile mirror cannot serve a poisoned file that passes its own hash."""
    said = []
    sources = ctx.metric_sources if ref.kind == "metric" else ctx.sources
    for other in [s for s in sources if s is not src]:
        try:
            theirs = other.listing(ref, ctx.opts.revision).by_path()
        except SourceError as exc:
            said.append(exc.line())
            continue
        unconfirmed = []
        for f in todo:
            o = theirs.get(f.path)
            if o is not None and o.sha256:
                ok = o.sha256 == digests[f.path]
            elif o is not None and o.git_oid:
                with staging.part(f.path).open_read() as fh:
                    h = git_blob_sha1_prefix(f.size)
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                ok = h.hexdigest() == o.git_oid
            else:
                unconfirmed.append(f.path)
                continue
            if not ok:
                raise StageError(f"{ref.kind} {ref.label}: --cross-check: {f.path} from {src.name} ({src.endpoint}) "
                                 f"has sha256 {digests[f.path][:16]}…, but {other.name} ({other.endpoint}) lists "
                                 "another hash; one of the mirrors serves a different file. Nothing was installed")
        if unconfirmed:
            raise StageError(f"{ref.kind} {ref.label}: --cross-check: {other.name} ({other.endpoint}) lists no hash "
                             f"for {', '.join(unconfirmed[:5])}; those files could not be cross-checked. Nothing "
                             "was installed")
        ctx.say(f"✓ {ref.kind} {ref.label}: {len(todo)} files cross-checked against {other.name} ({other.endpoint})")
        return
    raise StageError(f"{ref.kind} {ref.label}: --cross-check needs a second source that carries the repo; "
                     f"{'; '.join(said) or 'only one source is configured (sources.order)'}. Nothing was installed")


def _select(ref: AssetRef, ctx: _Ctx, src: Source, listing: Listing,
            staging: layout.Staging) -> tuple[set[str], int]:
    """(the files to stage, bytes fetched to decide: a dataset's card)."""
    paths = [f.path for f in listing.files]
    if ref.kind == "model":
        shards, pre = None, 0
        index = listing.by_path().get(select.SAFETENSORS_INDEX)
        if index is not None:  # a sharded checkpoint: fetch exactly the shards its index names
            pre, _ = _download_all(ref, ctx, [index], staging, quiet=True, headers=src.headers())
            shards = select.shards_of(staging.read_text(index.path))
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
        readme = staging.read_text("README.md")
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


def _media_request(ref: AssetRef, ctx: _Ctx) -> Optional["lf_media.MediaRequest"]:
    if ref.kind != "dataset" or not ctx.opts.media:
        return None
    return ctx.opts.media.get(ref.typed) or ctx.opts.media.get(ref.label)


def _check_space(cache: Cache, todo: list[RemoteFile], staging: layout.Staging) -> None:
    have = sum(staging.part(f.path).size() for f in todo)
    need = sum(f.size for f in todo) - have
    free = shutil.disk_usage(cache.root).free
    if need > free:
        raise OSError(errno.ENOSPC, f"needs {human(need)} more, {human(free)} free")


def _download_all(ref: AssetRef, ctx: _Ctx, todo: list[RemoteFile], staging: layout.Staging,
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
        part = staging.part(f.path + ".part")
        dest = staging.part(f.path)
        if dest.exists() and dest.size() == f.size and not part.exists():
            with dest.open_read() as fh:  # finished by an earlier, interrupted run: check again
                digest = sha256_fd(fh)
            if digest == f.sha256 or (not f.sha256 and _git_ok(dest, f.git_oid, f.size)):
                with lock:
                    digests[f.path] = digest
                prog.add(f.path, f.size)
                prog.file_done(f.path)
                return
            dest.remove()
        prog.file_started(f.path, f.size)
        before = part.size()

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
        staging.files.rename_file(f.path + ".part", f.path)
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


def _git_ok(part: layout.PartFile, git_oid: Optional[str], size: int) -> bool:
    if not git_oid:
        return True
    h = git_blob_sha1_prefix(size)
    with part.open_read() as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == git_oid
