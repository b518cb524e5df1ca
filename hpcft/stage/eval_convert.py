"""``hpcft stage --eval ... --source modelscope``: ModelScope's own benchmark copies, converted.

ModelScope hosts the benchmarks as loading scripts over archives (``modelscope/mmlu``,
``modelscope/cmmlu``, ``modelscope/ceval-exam``, ``modelscope/gsm8k``), with other split names and
columns than the repos lm-eval's task files load (``cais/mmlu``, ``haonan-li/cmmlu``,
``ceval/ceval-exam``, ``openai/gsm8k``). ``datasets`` 3+ runs no loading scripts, so a copy of
those files would not load on the node. This module fetches the repo's *data* files through the
ModelScope source (hashed while streaming, like every staged file), reads the archive / CSV /
JSON Lines itself -- it never runs the repo's script -- and writes the HF layout lm-eval loads:
JSON Lines per subject and split and a ``README.md`` whose ``configs:`` name them, installed as
the HF repo's snapshot in the cache (so ``load_dataset("cais/mmlu", "anatomy")`` finds it
offline), one manifest per config, written last. Each manifest records the source repo, its
commit, the hashes of the files fetched and of every archive member read (``converted_from``).

JSON Lines, not parquet: the login side has no pyarrow (hpcft's base install), and the bytes are
then a pure function of the source files (the same archive always gives the same files).

The layouts, from the loading scripts EvalScope keeps copies of (``modelscope/evalscope``):

* ``modelscope/mmlu`` -- ``evalscope/benchmarks/mmlu/mmlu.py`` @ d6ffc816cba8: ``data.tar`` with
  ``data/{dev,val,test}/<subject>_<folder>.csv``, no header, columns question, A-D, answer letter
  (the script renames them input, A-D, target and calls dev "train", val "validation"). Written as
  ``cais/mmlu``: splits dev / validation / test; question, subject, choices, answer (0-3). The script
  reads the first line as a header and so drops a question per file; cais/mmlu (and this) keep it.
* ``modelscope/cmmlu`` -- ``evalscope/benchmarks/cmmlu/cmmlu.py`` @ 925b9c28e23e: ``cmmlu_v1_0_1.zip``
  with ``{dev,test}/<subject>.csv``, a header, the first column an unnamed row index, then
  Question, A-D, Answer. Written as ``haonan-li/cmmlu``: dev / test, the same columns.
* ``modelscope/ceval-exam`` -- ``evalscope/benchmarks/ceval/ceval_exam.py`` @ cbebd31aa9f9:
  ``ceval-exam.zip`` with ``{dev,val,test}/<subject>_<folder>.csv``, a header id, question, A-D,
  answer, explanation (test has no answer/explanation; dev/val may lack explanation). The script
  downloads the zip from ModelScope's OSS bucket, not from the repo: hpcft converts it when the
  repo holds it, and says so in one line when it does not (nothing off the hub is fetched).
* ``modelscope/gsm8k`` -- ``evalscope/benchmarks/gsm8k/gsm8k.py`` @ 6d02ea917964: ``train.jsonl``,
  ``test.jsonl`` of {question, answer}; the script fetches them from an OSS bucket as well, so the
  same rule applies. Written as ``openai/gsm8k`` config ``main``: train / test.

What lm-eval loads (``lm_eval/tasks/{mmlu/default,cmmlu,ceval,gsm8k}/*.yaml`` of the installed
harness, 0.4.10+): ``hpcft/core/eval_tasks.py``'s table, which tests/test_eval_tasks.py checks.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..core.errors import ConfigError, StageError
from ..core.eval_tasks import BENCHMARKS, EvalTask
from ..core.resolve import AssetRef
from ..core.safefs import ME, owner_name
from ..core.store import sha256_fd
from . import layout, safe_archive
from .cards import sync_staged_configs
from .progress import human
from .safe_archive import Archive, Bad, csv_rows, member_index, text
from .sources import Listing, SourceError

CONVERTER = "hpcft.stage.eval_convert/1"   # in every manifest; a new layout bumps it (a new snapshot)
MAX_SOURCE = 1 << 30                       # a repo file fetched for conversion (MMLU's data.tar: 166 MB)
LETTERS = "ABCD"


@dataclass(frozen=True)
class MsBenchmark:
    name: str                     # the benchmark (hpcft.core.eval_tasks.BENCHMARKS)
    ms_id: str                    # ModelScope's repo
    files: tuple[str, ...]        # the repo files read (an archive, or the JSONL files)
    splits: dict                  # ModelScope's folder -> the HF split name
    script: str                   # the loading script the layout was read from
    off_hub: bool = False         # the script fetches its data from outside the hub


SPECS = {s.name: s for s in (
    MsBenchmark("mmlu", "modelscope/mmlu", ("data.tar",), {"dev": "dev", "val": "validation", "test": "test"},
                "mmlu.py"),
    MsBenchmark("cmmlu", "modelscope/cmmlu", ("cmmlu_v1_0_1.zip",), {"dev": "dev", "test": "test"}, "cmmlu.py"),
    MsBenchmark("ceval", "modelscope/ceval-exam", ("ceval-exam.zip",), {"dev": "dev", "val": "val", "test": "test"},
                "ceval_exam.py", off_hub=True),
    MsBenchmark("gsm8k", "modelscope/gsm8k", ("train.jsonl", "test.jsonl"), {"train": "train", "test": "test"},
                "gsm8k.py", off_hub=True),
)}
BY_MS_ID = {s.ms_id: s for s in SPECS.values()}

# the HF features of each converted config (as the HF repos' cards declare them)
_STR = "string"
FEATURES = {
    "mmlu": [{"name": "question", "dtype": _STR}, {"name": "subject", "dtype": _STR},
             {"name": "choices", "sequence": _STR},
             {"name": "answer", "dtype": {"class_label": {"names": {str(i): x for i, x in enumerate(LETTERS)}}}}],
    "cmmlu": [{"name": c, "dtype": _STR} for c in ("Question", "A", "B", "C", "D", "Answer")],
    "ceval": [{"name": "id", "dtype": "int32"}, *({"name": c, "dtype": _STR} for c in
                                                 ("question", "A", "B", "C", "D", "answer", "explanation"))],
    "gsm8k": [{"name": "question", "dtype": _STR}, {"name": "answer", "dtype": _STR}],
}


def eval_names(values, where: str = "--eval") -> list[str]:
    """Task names, with ModelScope's ids accepted for the benchmarks (``modelscope/mmlu`` is
    ``mmlu``); any other ``org/name`` is refused in one line."""
    from ..core.eval_tasks import split_names

    out, bad = [], []
    for n in split_names(values):
        if "/" in n:
            spec = BY_MS_ID.get(n)
            if spec is None:
                bad.append(f"{where}: {n!r} is not a ModelScope benchmark hpcft converts; known: "
                           + ", ".join(f"{s.ms_id} ({s.name})" for s in SPECS.values()))
                continue
            n = spec.name
        out.append(n)
    if bad:
        raise ConfigError(bad)
    return out


# ---------------------------------------------------------------------------------------------- layouts
def _mmlu(rows: list[list[str]], subject: str, where: str) -> list[dict]:
    out = []
    for i, r in enumerate(rows, 1):
        if i == 1 and [c.strip().lower() for c in r] in (["input", "a", "b", "c", "d", "target"],
                                                        ["question", "a", "b", "c", "d", "answer"]):
            continue  # a header some copies carry; the original data.tar has none
        if not r:
            continue
        if len(r) != 6:
            raise Bad(f"{where}:{i}: {len(r)} columns, expected 6 (question, A, B, C, D, answer)")
        ans = r[5].strip()
        if ans not in LETTERS:
            raise Bad(f"{where}:{i}: answer: {ans!r} is not one of A, B, C, D")
        out.append({"question": r[0], "subject": subject, "choices": r[1:5], "answer": LETTERS.index(ans)})
    return out


def _with_header(rows: list[list[str]], where: str, need: tuple[str, ...], optional: tuple[str, ...] = ()
                 ) -> Iterator[tuple[int, dict]]:
    if not rows:
        raise Bad(f"{where}:1: empty file; expected a header with {', '.join(need)}")
    head = [c.strip() for c in rows[0]]
    missing = [c for c in need if c not in head]
    if missing:
        raise Bad(f"{where}:1: no column {', '.join(repr(c) for c in missing)} (header: {', '.join(head)})")
    at = {c: head.index(c) for c in (*need, *optional) if c in head}
    for i, r in enumerate(rows[1:], 2):
        if not r:
            continue
        if len(r) != len(head):
            raise Bad(f"{where}:{i}: {len(r)} columns, expected {len(head)} ({', '.join(head)})")
        yield i, {c: r[j] for c, j in at.items()}


def _cmmlu(rows, subject: str, where: str) -> list[dict]:
    cols = ("Question", "A", "B", "C", "D", "Answer")
    out = []
    for i, row in _with_header(rows, where, cols):
        if row["Answer"].strip() not in LETTERS:
            raise Bad(f"{where}:{i}: Answer: {row['Answer']!r} is not one of A, B, C, D")
        out.append({c: row[c] for c in cols})
    return out


def _ceval(rows, subject: str, where: str) -> list[dict]:
    out = []
    for i, row in _with_header(rows, where, ("id", "question", "A", "B", "C", "D"), ("answer", "explanation")):
        try:
            ident = int(row["id"])
        except ValueError:
            raise Bad(f"{where}:{i}: id: {row['id']!r} is not a whole number") from None
        ans = row.get("answer", "").strip()
        if ans and ans not in LETTERS:
            raise Bad(f"{where}:{i}: answer: {ans!r} is not one of A, B, C, D")
        out.append({"id": ident, "question": row["question"], **{c: row[c] for c in LETTERS}, "answer": ans,
                    "explanation": row.get("explanation", "")})
    return out


def _gsm8k(data: bytes, where: str) -> list[dict]:
    out = []
    for i, line in enumerate(text(data, where).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise Bad(f"{where}:{i}: not JSON ({exc.args[0] if exc.args else exc})") from None
        if not isinstance(obj, dict):
            raise Bad(f"{where}:{i}: not a JSON object")
        for key in ("question", "answer"):
            if not isinstance(obj.get(key), str):
                raise Bad(f"{where}:{i}: {key}: missing or not a string")
        out.append({"question": obj["question"], "answer": obj["answer"]})
    return out


# (member pattern: folder, subject[, folder again]) and the row reader of each CSV benchmark
CSV_LAYOUT: dict[str, tuple[str, Callable]] = {
    "mmlu": (r"(?:^|/)(dev|val|test)/([A-Za-z0-9_]+)_(dev|val|test)\.csv$", _mmlu),
    "ceval": (r"(?:^|/)(dev|val|test)/([A-Za-z0-9_]+)_(dev|val|test)\.csv$", _ceval),
    "cmmlu": (r"(?:^|/)(dev|test)/([A-Za-z0-9_]+)\.csv$", _cmmlu),
}


def convert(spec: MsBenchmark, configs: list[str], fetched: dict[str, Path]) -> tuple[dict, list[dict]]:
    """({(config, hf split): rows}, the members read [{path, size, sha256}]) from the fetched files."""
    out: dict[tuple[str, str], list[dict]] = {}
    members: list[dict] = []
    if spec.name == "gsm8k":
        for folder, split in spec.splits.items():
            name = f"{folder}.jsonl"
            if fetched[name].stat().st_size > safe_archive.MAX_MEMBER:
                raise Bad(f"{name}: {fetched[name].stat().st_size:,} bytes, over the {safe_archive.cap_text()} a "
                          "file read may have; refused")
            data = fetched[name].read_bytes()
            members.append({"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            out[("main", split)] = _gsm8k(data, name)
        return out, members
    [archive_name] = spec.files
    pattern, reader = CSV_LAYOUT[spec.name]
    arc = Archive(fetched[archive_name], archive_name)
    try:
        index = member_index(arc.sizes, pattern, archive_name)
        for subject in configs:
            for folder, split in spec.splits.items():
                member = index.get((folder, subject))
                if member is None:
                    want = f"{folder}/{subject}_{folder}.csv" if spec.name != "cmmlu" else f"{folder}/{subject}.csv"
                    raise Bad(f"no member {want} for config {subject!r}, split {split!r} (the layout of "
                               f"{spec.script}); the archive holds {len(index)} such CSV files")
                data = arc.read(member)
                members.append({"path": f"{archive_name}:{member}", "size": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()})
                out[(subject, split)] = reader(csv_rows(data, member), subject, member)
    finally:
        arc.close()
    return out, members


def card(spec: MsBenchmark) -> bytes:
    """The README of the converted repo: every config of the benchmark (the same bytes whatever is
    staged; ``.huggingface.yaml`` then names the configs present, see cards.py)."""
    import yaml

    b = BENCHMARKS[spec.name]
    splits = list(spec.splits.values())
    meta = {"dataset_info": [{"config_name": c, "features": FEATURES[spec.name]} for c in b.subjects],
            "configs": [{"config_name": c, "data_files": [{"split": s, "path": f"{c}/{s}-*"} for s in splits]}
                        for c in b.subjects]}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return (f"---\n{front}---\n\n# {b.repo}, converted by hpcft from ModelScope's {spec.ms_id}\n\n"
            f"Written by {CONVERTER} from the data files of {spec.ms_id} (layout of its {spec.script}), "
            f"in the layout lm-evaluation-harness loads as {b.repo}. The manifest of each config lists the "
            "source files and archive members with their sha256 (converted_from).\n").encode()


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


# ---------------------------------------------------------------------------------------------- staging
def check_options(opts) -> None:
    """Options the conversion cannot honour, refused before anything is staged."""
    if opts.cross_check:
        raise ConfigError(["--cross-check: ModelScope's benchmark archives exist on no other source to check them "
                           "against; stage the benchmarks from hf for a cross-checked copy"])


def stage_eval(tasks: list[EvalTask], settings, cache_root: Path, table, opts) -> list:
    """Stage ``tasks``' datasets from ModelScope's own copies, converted; a StageResult per config."""
    from . import stage as st

    check_options(opts)
    if opts.revision is not None:
        from ..core import names

        names.revision(opts.revision, "--revision")
    cache = layout.cache_for(settings, Path(cache_root))
    ctx = st._Ctx(settings, cache, table, type(opts)(**{**opts.__dict__, "source": "modelscope"}))
    layout.prepare_cache(cache, ctx.modes)
    wanted: dict[str, list[str]] = {}
    for t in tasks:
        wanted.setdefault(t.benchmark.name, [])
        wanted[t.benchmark.name] += [c for c in t.configs if c not in wanted[t.benchmark.name]]
    results = []
    for name, configs in wanted.items():
        results += _stage_benchmark(SPECS[name], configs, ctx)
    if ctx.problems:
        raise StageError("staged, but " + "; ".join(dict.fromkeys(ctx.problems)))
    return results


def _ref(spec: MsBenchmark, config: str) -> AssetRef:
    repo = BENCHMARKS[spec.name].repo
    return AssetRef("dataset", repo, f"{repo}:{config}", config=config, names=(), ms_id=spec.ms_id)


def _hits(spec: MsBenchmark, configs: list[str], ctx) -> tuple[list, list[str]]:
    from . import stage as st

    done, todo = [], []
    for c in configs:
        ref = _ref(spec, c)
        asset = ctx.cache.find("dataset", ref.repo_id, c)
        owner = asset.manifest.get("_owner", ME) if asset else ME
        if asset is not None and asset.manifest.get("converted_from") and owner not in (ME, 0, *ctx.cache.admins):
            who = owner_name(owner)
            raise StageError(f"dataset {ref.label}: converted from {spec.ms_id} by {who}; another user's "
                             f"conversion cannot be checked against the mirror, so it is not used. Ask {who} or the "
                             f"cache admin to run `hpcft cache rm {ref.label}`, or stage into a cache of your own "
                             "(--cache DIR)")
        hit = st._cached(ref, ctx)
        (done if hit else todo).append(hit or c)
    return done, todo


def _stage_benchmark(spec: MsBenchmark, configs: list[str], ctx) -> list:
    done, todo = _hits(spec, configs, ctx)
    for hit in done:
        ctx.say(f"✓ dataset {hit.repo_id}:{hit.config}: already staged ({hit.source}, {str(hit.sha)[:12]}) at "
                f"{hit.path}")
    if not todo:
        return done
    repo = BENCHMARKS[spec.name].repo
    with layout.lock(ctx.cache, "dataset", repo, None):
        done2, todo = _hits(spec, todo, ctx)  # another stage may have converted them meanwhile
        if not todo:
            return done + done2
        return done + done2 + _convert_and_install(spec, todo, ctx)


def _listing(spec: MsBenchmark, ctx) -> tuple:
    src = ctx.sources[0]
    probe = AssetRef("dataset", spec.ms_id, spec.ms_id)
    try:
        listing: Listing = src.listing(probe, ctx.opts.revision)
    except SourceError as exc:
        raise StageError(f"dataset {spec.ms_id} ({spec.name}): could not be listed. Asked {exc.line()}") from None
    by_path = listing.by_path()
    missing = [f for f in spec.files if f not in by_path]
    if missing:
        where = (f"its loading script {spec.script} downloads them from outside the hub, where no hash can be "
                 "checked" if spec.off_hub else f"the layout of its {spec.script}")
        raise StageError(f"dataset {spec.ms_id} ({spec.name}): the repo holds no {', '.join(missing)} ({where}); "
                         f"it lists {', '.join(sorted(by_path)[:8]) or 'no files'}. Stage {spec.name} from the hf "
                         "mirror instead (--source hf)")
    files = [by_path[f] for f in spec.files]
    big = [f for f in files if f.size > MAX_SOURCE]
    if big:
        raise ConfigError([f"dataset {spec.ms_id}: {big[0].path} is {big[0].size:,} bytes, over the "
                           f"{MAX_SOURCE >> 30} GiB a benchmark's source file may have; refused"])
    unverified = [f.path for f in files if not f.verified]
    if unverified and not ctx.opts.allow_unverified:
        raise StageError(f"dataset {spec.ms_id}: the file list gives no hash for {', '.join(unverified)}, so the "
                         "bytes could not be verified; refused (--allow-unverified accepts such files and records "
                         "them in the manifest)")
    return src, listing, files, unverified


def _convert_and_install(spec: MsBenchmark, configs: list[str], ctx) -> list:
    from . import stage as st

    t0 = time.monotonic()
    cache, modes = ctx.cache, ctx.modes
    repo = BENCHMARKS[spec.name].repo
    src, listing, files, unverified = _listing(spec, ctx)
    sha = hashlib.sha1(f"{CONVERTER}\0{spec.ms_id}\0{listing.sha}".encode()).hexdigest()
    ref0 = _ref(spec, configs[0])
    ctx.say(f"↓ dataset {spec.ms_id} from modelscope {src.endpoint} @ {listing.sha[:12]}: "
            f"{', '.join(f.path for f in files)} ({human(sum(f.size for f in files))}), to convert into {repo} "
            f"({len(configs)} config(s))")
    raw = layout.Staging(cache, modes, layout.staging_prefix("dataset", spec.ms_id, None, "msraw", listing.sha))
    try:
        fetched_bytes, digests = st._download_all(ref0, ctx, files, raw, headers=src.headers())
    except BaseException:
        raw.close()  # the partial download stays for the next run to resume
        raise
    out = None
    try:
        paths = {f.path: raw.path / f.path for f in files}
        try:
            rows, members = convert(spec, configs, paths)
        except Bad as exc:
            raise ConfigError([f"dataset {spec.ms_id} {' '.join(spec.files)}: {exc}"]) from None
        out = layout.Staging(cache, modes, layout.staging_prefix("dataset", repo, None, "msconvert", sha))
        for rel in list(out.files.walk_files()):  # an interrupted earlier conversion: start afresh
            out.files.unlink(rel)
        written: dict[str, dict] = {}

        def put(rel: str, data: bytes) -> None:
            with out.part(rel).open_append() as fh:
                fh.write(data)
            written[rel] = {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        put("README.md", card(spec))
        for (config, split), body in sorted(rows.items()):
            put(f"{config}/{split}-00000-of-00001.jsonl", _jsonl(body))
        final = layout.install(cache, modes, "dataset", repo, sha, out)
    except BaseException:
        if out is not None:
            out.remove()
        raw.remove()
        raise
    out.remove()
    raw.remove()
    for warning in layout.write_ref(cache, modes, "dataset", repo, "main", sha):
        ctx.say(f"! dataset {repo}: {warning}")
    sync_staged_configs(cache, final, modes)
    source_files = [{"path": f.path, "size": f.size, "sha256": digests[f.path]} for f in files]
    results = []
    for config in configs:
        ref = _ref(spec, config)
        mine = [written["README.md"], *(w for p, w in sorted(written.items()) if p.startswith(config + "/"))]
        _check_written(final, mine)
        extra = {"typed": ref.typed, "skipped": [],
                 "converted_from": {"repo": spec.ms_id, "revision": listing.revision, "sha": listing.sha,
                                    "endpoint": src.endpoint, "files": source_files, "script": spec.script,
                                    "members": [m for m in members if _member_of(m["path"], config, spec)],
                                    "converter": CONVERTER}}
        if unverified:
            extra["unverified"] = unverified
        manifest = cache.write_manifest("dataset", repo, config, final, source="modelscope", endpoint=src.endpoint,
                                        revision="main", sha=sha, files=mine, aliases=[spec.ms_id], extra=extra,
                                        modes=modes)
        results.append(st.StageResult("dataset", repo, config, ref.typed, "staged", str(final), sha=sha,
                                      source="modelscope", endpoint=src.endpoint, files=len(mine),
                                      bytes=manifest["size"], fetched=fetched_bytes if not results else 0,
                                      seconds=time.monotonic() - t0))
    ctx.say(f"✓ dataset {repo}: {len(configs)} config(s) converted from {spec.ms_id} @ {listing.sha[:12]} in "
            f"{time.monotonic() - t0:.1f} s -> {final}")
    return results


def _member_of(path: str, config: str, spec: MsBenchmark) -> bool:
    if spec.name == "gsm8k":
        return True
    base = path.rsplit("/", 1)[-1]
    return base in {f"{config}.csv", *(f"{config}_{folder}.csv" for folder in spec.splits)}


def _check_written(final: Path, files: list[dict]) -> None:
    """What landed in the snapshot is what was converted (a merge into an existing snapshot of ours
    keeps a file only when its bytes are the same)."""
    for f in files:
        with open(final / f["path"], "rb") as fh:
            if sha256_fd(fh) != f["sha256"]:
                raise StageError(f"{final / f['path']}: differs from what was just converted; refused")
