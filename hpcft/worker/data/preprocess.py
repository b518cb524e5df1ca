"""``python -m hpcft.worker.data.preprocess FOLDER``: the CPU job of ``train.preprocess: cpu-job``
and ``hpcft preprocess`` (queued by :mod:`hpcft.submit.preprocess`).

FOLDER holds the job (``job.yaml``) and ``preprocess-spec.json`` (the job's base folder, the
number of processes for the tokenizing map, the key the login node computed). The job's data
are tokenized into the tokenize-once cache (:func:`hpcft.worker.data.cache.sft_data`, as rank 0
of the training job would: the same key, the same lock), or found there; no model is loaded.
``preprocess.json`` records where (job, node), how (hit or built, processes) and how long. A
failure is recorded in one line and exits 1: Slurm's ``afterok`` then cancels the training job.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from hpcft.core.atomic import atomic_write_json
from hpcft.core.preprocess import RECORD, SPEC
from hpcft.worker.console import error, log, warn


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def build(folder: Path) -> dict:
    """Tokenize (or find) the data of the job in ``folder``; the record written to preprocess.json."""
    import yaml

    from hpcft.core.assets import job_assets, require
    from hpcft.core.config import load_settings
    from hpcft.core.job import Job
    from hpcft.core.resolve import load_table
    from hpcft.core.store import Cache, admin_uids
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.cache import sft_data
    from hpcft.worker.engines.native.llm_model import load_tokenizer

    spec = json.loads((folder / SPEC).read_text(encoding="utf-8"))
    job = Job.model_validate(yaml.safe_load((folder / "job.yaml").read_text(encoding="utf-8")))
    settings = load_settings()
    table = load_table(settings)
    found = job_assets(job, Cache(Path(os.environ.get("HPCFT_CACHE") or settings.cache), admin_uids(settings)),
                       table, Path(spec["base_dir"]))
    require(found, table)
    t = job.train
    model = found[0].path
    num_proc = max(1, int(os.environ.get("SLURM_CPUS_PER_TASK") or spec.get("num_proc") or 1))
    log(f"preprocess: tokenizing the data of job {job.name} with {num_proc} process(es), no model loaded")
    t0 = time.monotonic()
    tokenizer = load_tokenizer(model, trust_remote_code=bool(t.trust_remote_code))
    renderer = ld.Renderer(tokenizer, t.enable_thinking, t.train_on or "all")
    data = sft_data(t, found[1:1 + len(t.dataset_entries)], tokenizer, renderer, model, rank=0, num_proc=num_proc)
    info = data.info
    if spec.get("key") and info.get("cache_key") != spec["key"]:
        warn(f"the login node computed cache key {spec['key']}, this environment {info.get('cache_key')} (other "
             "library versions or hpcft code?): the training job finds the data only if it runs in this environment")
    return {"state": "done", "cache": info.get("cache"), "key": info.get("cache_key"),
            "predicted_key": spec.get("key"), "examples": info.get("train_examples"), "tokens": info.get("tokens"),
            "tokenize_s": info.get("cache_built_s") if info.get("cache") == "hit" else info.get("tokenize_s"),
            "seconds": round(time.monotonic() - t0, 3), "num_proc": num_proc}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hpcft.worker.data.preprocess FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    where = {"job_id": os.environ.get("SLURM_JOB_ID"), "node": socket.gethostname(), "started_at": _now()}
    try:
        rec = {**where, **build(folder), "ended_at": _now()}
    except Exception as exc:  # noqa: BLE001 - any failure is recorded in one line for status/show, then exit 1
        msg = str(exc).strip().splitlines()
        line = f"{type(exc).__name__}: {msg[-1] if msg else ''}".rstrip(": ")
        atomic_write_json(folder / RECORD, {**where, "state": "failed", "error": line, "ended_at": _now()})
        error(f"preprocess failed: {line}")
        raise
    atomic_write_json(folder / RECORD, rec)
    log(f"preprocess: {rec['cache']} cache {rec['key']}: {rec['examples']} examples, {rec['tokens']} tokens, "
        f"{rec['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
