"""``hpcft eval``: benchmark scores of a run's model (with its adapter) or of a base model (login side).

What is scored: a run (its saved model; a LoRA run is the staged base model plus the adapter, as
the harness's ``peft=``), or a bare model name / staged alias / model folder (the base model; its
scores go into a new run folder of kind ``eval``, so that ``hpcft compare BASE RUN`` puts them side
by side). Before anything runs or is queued, every task's datasets must be staged (the same lookup
the job's shim does on the node); otherwise one line per task with the ``hpcft stage --eval``
command. The model code is :mod:`hpcft.worker.after_training.evaluate`: a subprocess here on the login node's CPU,
or with ``--submit`` a one-task Slurm job rendered from the run's own job
(:func:`hpcft.use.launch.submit_aux`: same partition, environment, devices and offline variables).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.assets import lookup
from ..core.atomic import read_json
from ..core.config import Settings
from ..core.errors import ConfigError, NotFoundError
from ..core.eval_tasks import EVAL_DIR, EvalTask
from ..core.resolve import load_table
from ..core.rundir import LaunchSpec, RunPaths
from ..runs.index import RunRecord, RunStore, new_run_dir, now_iso
from ..runs.ref import resolve_run
from ..stage.layout import cache_for
from .delegated import refusal


@dataclass
class EvalTarget:
    """What to score and where its results go."""

    label: str                     # what the user typed
    model: Path                    # the (base) model folder
    adapter: Optional[Path]        # the run's LoRA adapter, if any
    tokenizer: Optional[Path]      # the run's tokenizer (saved with its output)
    record: Optional[RunRecord]    # the run, None for a base model (a new eval run is made)
    device: str = "cpu"            # the run's device kind (gpu | npu | cpu), for --submit

    @property
    def out(self) -> Optional[Path]:
        return Path(self.record.run_dir) / EVAL_DIR if self.record else None


def target(ref: str, settings: Settings) -> EvalTarget:
    """A run (id, prefix, job name, folder, Slurm id) first; else a staged model or a model folder."""
    store = RunStore(settings.runs)
    try:
        record = resolve_run(store, ref)
    except NotFoundError:
        record = None
    if record is not None:
        return _run_target(ref, record)
    folder = Path(ref).expanduser()
    if (folder / "config.json").is_file():
        return EvalTarget(ref, folder.resolve(), None, None, None)
    table = load_table(settings)
    found = lookup("model", ref, cache_for(settings), table)
    if found.path is None:
        raise ConfigError([f"hpcft eval: {ref!r} is neither a run nor a staged model; stage it on the login node: "
                           f"hpcft stage {ref} (or name a run: hpcft runs)"])
    return EvalTarget(ref, Path(found.path), None, None, None)


def _run_target(ref: str, record: RunRecord) -> EvalTarget:
    paths = RunPaths(record.run_dir)
    m = read_json(paths.metrics) or {}
    try:
        spec = LaunchSpec.read(paths.dir)
        out, device = Path(spec.output_dir), spec.device
    except (OSError, ValueError, TypeError):
        out, device = paths.output, "cpu"
    out = Path(m.get("output_dir") or out)
    if not m.get("completed"):
        raise NotFoundError(f"run {record.run_id} has no finished model yet (state {record.state}); hpcft eval scores "
                            "a finished run (see: hpcft status)")
    why = refusal(m, record.run_id)   # a delegated run whose LLaMA-Factory output is no causal LM
    if why:
        raise ConfigError([f"hpcft eval: {why}"])
    if m.get("task") != "causal-lm" and not m.get("base_model"):  # LLM runs (SFT, preference tuning) record it
        raise ConfigError([f"hpcft eval: run {record.run_id} is not an LLM run (train.task: causal-lm, dpo, ...); "
                           "benchmarks score generative models"])
    if (out / "adapter_config.json").is_file():
        base = m.get("base_model")
        if not base or not (Path(base) / "config.json").is_file():
            raise NotFoundError(f"run {record.run_id}: its base model {base or '(unrecorded)'} is not in the cache; "
                                "stage it again (hpcft stage MODEL)")
        return EvalTarget(ref, Path(base), out, out, record, device)
    if not (out / "config.json").is_file():
        raise NotFoundError(f"run {record.run_id} has no saved model in {out} (state {record.state}); "
                            "hpcft eval scores a finished run (see: hpcft status)")
    return EvalTarget(ref, out, None, out, record, device)


def missing_data(tasks: list[EvalTask], settings: Settings) -> list[str]:
    """One line per task whose datasets are not all staged, with the command that stages them."""
    cache, table = cache_for(settings), load_table(settings)
    lines = []
    for t in tasks:
        gone = [d for d in t.datasets if lookup("dataset", d, cache, table).path is None]
        if gone:
            what = gone[0] if len(gone) == 1 else f"{len(gone)} of its {len(t.datasets)} configs, e.g. {gone[0]}"
            lines.append(f"eval task {t.name}: its data is not staged ({what}); on the login node run: "
                         f"hpcft stage --eval {t.name}")
    return lines


def require_staged(tasks: list[EvalTask], settings: Settings) -> None:
    lines = missing_data(tasks, settings)
    if lines:
        raise ConfigError(lines)


def new_eval_run(t: EvalTarget, settings: Settings) -> EvalTarget:
    """A run folder (kind ``eval``) for a base model's scores."""
    store = RunStore(settings.runs)
    name = f"eval-{Path(t.label).name if '/' in t.label and Path(t.label).exists() else t.label}"
    paths = new_run_dir(settings.runs, name)
    record = RunRecord(run_id=paths.run_id, name=name, run_dir=str(paths.dir), job_file=None, kind="eval",
                       executor="local", submitted_at=now_iso(), state="RUNNING")
    store.add(record)
    from ..core.atomic import atomic_write_json

    atomic_write_json(paths.dir / "eval.json", {"model": str(t.model), "label": t.label})
    return EvalTarget(t.label, t.model, None, None, record, t.device)


def finish(t: EvalTarget, settings: Settings, ok: bool) -> None:
    if t.record is not None and t.record.kind == "eval":
        t.record.state = "COMPLETED" if ok else "FAILED"
        RunStore(settings.runs).save(t.record)


def worker_args(t: EvalTarget, tasks: list[EvalTask], *, limit: Optional[int], fewshot: Optional[int],
                batch_size: int, device: str) -> list[str]:
    args = ["--model", str(t.model), "--tasks", ",".join(x.name for x in tasks), "--out", str(t.out),
            "--device", device, "--batch-size", str(batch_size)]
    if t.adapter:
        args += ["--adapter", str(t.adapter)]
    if t.tokenizer:
        args += ["--tokenizer", str(t.tokenizer)]
    if limit:
        args += ["--limit", str(limit)]
    if fewshot is not None:
        args += ["--fewshot", str(fewshot)]
    return args


def engine_args(t: EvalTarget, *, backend: str = "auto", chat_template: bool = False, dtype: str = "auto",
                max_model_len: Optional[int] = None, gpu_memory_utilization: Optional[float] = None) -> list[str]:
    """The worker's engine flags: the harness backend, chat template, dtype, context length, and
    ``--trust-remote-code`` when the run's own job said ``train.trust_remote_code: true``."""
    args = ["--backend", backend, "--dtype", dtype]
    if chat_template:
        args.append("--chat-template")
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    if gpu_memory_utilization:
        args += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if t.record is not None and trusts_remote_code(RunPaths(t.record.run_dir)):
        args.append("--trust-remote-code")
    return args


def trusts_remote_code(paths: RunPaths) -> bool:
    """The run's own job said ``train.trust_remote_code: true`` (never implied; a base model's
    eval run has no job, so its model's code is not run)."""
    import yaml

    try:
        job = yaml.safe_load(paths.job_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return False
    return bool(isinstance(job, dict) and (job.get("train") or {}).get("trust_remote_code") is True)
