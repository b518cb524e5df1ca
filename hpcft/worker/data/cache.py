"""Tokenize once: ``task: causal-lm``'s tokenized (and packed) data, cached in the user's own
run-time folder (``$HPCFT_RUNTIME/data/KEY``, 0700: nothing another group member can write is
read) and memory-mapped for training, so a requeue, a sweep point with the same data or a rerun
starts training at once (``train.data_cache: false`` turns it off).

**The key** (:func:`cache_key`) is :mod:`hpcft.core.data_key`'s hash of everything that changes
the tokens (the datasets' files, the tokenizer's files, the job's data settings, the library
versions, hpcft's data code); the login node computes the same key without loading anything
(``hpcft preprocess``, ``train.preprocess: cpu-job``: a CPU job builds the cache first).

**Building.** The first rank that takes the lock ``KEY.lock`` (:class:`hpcft.core.safefs.Lock`,
an ``flock``: no collective, so no NCCL/gloo/HCCL timeout while it tokenizes) builds the data
into ``.tmp-KEY-PID`` with datasets' ``save_to_disk``, writes ``meta.json`` last and renames the
folder to ``KEY``: a half-written cache is never read. The other ranks wait on the lock (rank 0
takes it first: they look for its holder before they queue), then every rank loads ``KEY``
memory-mapped. A cache that does not load as its ``meta.json`` says (sizes, rows, tokens) is
rebuilt, with one warning line.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from hpcft.core import data_key
from hpcft.core.data_key import cache_key, ingredients  # the login node computes the same key
from hpcft.worker.console import log, warn
from hpcft.worker.data.mix import SftData, load_sft_data

FOLDER, META = data_key.FOLDER, data_key.META
FORMAT = data_key.FORMAT
PROMPTS_KEPT = 100          # train.sample_prompts is at most 100


class CorruptCache(Exception):
    """A cache folder that does not hold what its meta.json says."""


# --------------------------------------------------------------------------- reading and writing

def _tokens(ds) -> int:
    """Tokens of a dataset on disk, from the list offsets (no row is read into Python)."""
    import pyarrow.compute as pc

    col = ds.data.column("input_ids")
    return int(pc.sum(pc.list_value_length(col)).as_py() or 0) if len(col) else 0


_sizes = data_key.file_sizes


def load(folder: Path, packing: bool) -> tuple[SftData, dict]:
    """The cached data of ``folder``, memory-mapped; :class:`CorruptCache` when it is not what
    its meta.json says; FileNotFoundError when there is none."""
    import datasets

    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if folder.exists():
            raise CorruptCache(f"{folder}: no {META}") from None
        raise
    except (OSError, ValueError) as exc:
        raise CorruptCache(f"{folder / META}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCache(f"{folder}: not a cache of format {FORMAT}")
    if _sizes(folder) != meta.get("files"):
        raise CorruptCache(f"{folder}: its files are not those meta.json lists (sizes differ, or files "
                           "are missing)")
    try:
        train = datasets.load_from_disk(str(folder / "train"))
        ev = datasets.load_from_disk(str(folder / "eval")) if meta.get("eval_examples") else train.select([])
        counts = (len(train), len(ev), _tokens(train))
    except Exception as exc:  # noqa: BLE001 - whatever a damaged Arrow file raises: rebuilt
        raise CorruptCache(f"{folder}: {type(exc).__name__}: {exc}") from None
    if counts != (meta["examples"], meta["eval_examples"], meta["tokens"]):
        raise CorruptCache(f"{folder}: {counts} (examples, eval examples, tokens), meta.json says "
                           f"{(meta['examples'], meta['eval_examples'], meta['tokens'])}")
    if not packing:  # lengths for the length-grouped sampler, from the offsets
        import pyarrow.compute as pc

        train = train.add_column("length", pc.list_value_length(train.data.column("input_ids")).to_pylist())
    prompts = [(row, fmt) for row, fmt in meta["prompts"]]
    return SftData(train, ev, prompts, meta["real_tokens"], dict(meta["info"])), meta


def write(folder: Path, data: SftData, tokenize_s: float) -> None:
    """``data`` into ``folder`` atomically: built in ``.tmp-NAME-PID`` beside it, meta.json last,
    then renamed (the caller holds the lock and has removed any earlier ``folder``)."""
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        data.train.save_to_disk(str(tmp / "train"))
        if len(data.eval):   # datasets cannot read back an empty split (eval_split: none has no eval rows)
            data.eval.save_to_disk(str(tmp / "eval"))
        meta = {"format": FORMAT, "key": folder.name, "examples": len(data.train), "eval_examples": len(data.eval),
                "tokens": _tokens_of(data.train), "real_tokens": data.real_tokens, "info": data.info,
                "prompts": [[row, fmt] for row, fmt in data.prompts[:PROMPTS_KEPT]],
                "tokenize_s": round(tokenize_s, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": _sizes(tmp)}
        text = json.dumps(meta, ensure_ascii=False, default=str)
        with open(tmp / META, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tokens_of(ds) -> int:
    """Tokens of an in-memory or selected dataset (its rows may be an index mapping)."""
    return sum(len(x) for x in ds["input_ids"])


# --------------------------------------------------------------------------- the data phase

def cache_root() -> Path:
    from hpcft.core.offline import ensure_private, private_runtime

    runtime = os.environ.get("HPCFT_RUNTIME")
    return ensure_private((Path(runtime) if runtime else private_runtime()) / FOLDER)


def sft_data(t, refs: list, tokenizer, renderer, model_path: Path, rank: int = 0,
             num_proc: Optional[int] = None) -> SftData:
    """:func:`hpcft.worker.data.mix.load_sft_data`'s data, from the cache when it has them (see
    the module docstring); ``info`` says ``cache`` (hit, built or off), ``cache_key``,
    ``tokenize_s`` (this run's seconds for its data) and ``tokens``. ``num_proc``: processes
    for the tokenizing map (the CPU job of :mod:`hpcft.worker.data.preprocess`)."""
    t0 = time.monotonic()
    if t.data_cache is False:
        data = load_sft_data(t, refs, tokenizer, renderer, num_proc)
        data.info.update(cache="off", tokenize_s=round(time.monotonic() - t0, 3), tokens=data.real_tokens)
        return data
    root = cache_root()
    key = cache_key(ingredients(t, refs, model_path))
    data, meta = _ready(root / key, t, quiet=True)
    status = "hit"
    if data is None:
        data, meta, status = _under_lock(root, key, t, rank, lambda: load_sft_data(t, refs, tokenizer, renderer, num_proc))
    seconds = round(time.monotonic() - t0, 3)
    if status == "hit":
        log(f"tokenized data from cache {key} ({meta['info']['train_examples']} examples, {meta['tokens']} tokens; "
            f"loaded in {seconds:.2f} s, built in {meta['tokenize_s']:.2f} s)")
    data.info.update(cache=status, cache_key=key, tokenize_s=seconds, tokens=meta["tokens"],
                     **({"cache_built_s": meta["tokenize_s"]} if status == "hit" else {}))
    return data


def _ready(folder: Path, t, quiet: bool) -> tuple[Optional[SftData], Optional[dict]]:
    """The cache of ``folder`` if complete; a damaged one is removed (under the lock: not
    ``quiet``) with one warning line."""
    try:
        return load(folder, bool(t.packing))
    except FileNotFoundError:
        return None, None
    except CorruptCache as exc:
        if not quiet:
            warn(f"tokenized data cache {folder.name} is damaged ({exc}); removed and built again")
            shutil.rmtree(folder, ignore_errors=True)
        return None, None


def _under_lock(root: Path, key: str, t, rank: int, build) -> tuple[SftData, dict, str]:
    from hpcft.core.safefs import Dir, Lock

    lock_name = f"{key}.lock"
    if rank != 0:
        _await_holder(root, key, lock_name)
    t0 = time.monotonic()
    with Dir.open_root(root) as folder, Lock(folder, lock_name, timeout=None,
                                             on_wait=lambda s, where: log(f"waiting {s:.0f} s on {where}")):
        waited = time.monotonic() - t0
        if rank != 0 or waited > 1:
            log(f"rank {rank} waited {waited:.2f} s on the lock {root / lock_name} while tokenizing went on")
        data, meta = _ready(root / key, t, quiet=False)
        if data is not None:
            return data, meta, "hit"
        for stale in root.glob(f".tmp-{key}-*"):   # a build that died (we hold its key's lock)
            shutil.rmtree(stale, ignore_errors=True)
        t1 = time.monotonic()
        built = build()
        seconds = time.monotonic() - t1
        write(root / key, built, seconds)
        data, meta = load(root / key, bool(t.packing))
        log(f"tokenized {meta['info']['train_examples']} examples ({meta['tokens']} tokens) in {seconds:.2f} s "
            f"-> cache {key}")
        return data, meta, "built"


def _await_holder(root: Path, key: str, lock_name: str, limit_s: float = 120) -> None:
    """A rank other than 0: wait until rank 0 holds the lock (or the cache is there), so rank 0
    builds; after ``limit_s`` (rank 0 slow to get here, or gone) it queues for the lock anyway."""
    from hpcft.core.safefs import Lock

    deadline = time.monotonic() + limit_s
    lock = root / lock_name
    while time.monotonic() < deadline and not (root / key / META).exists():
        try:  # held on this host, or a holder's record in the file (another host)
            st = lock.stat()
            if st.st_size or Lock.flock_holders(st):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
