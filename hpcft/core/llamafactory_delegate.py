"""A LLaMA-Factory YAML as a delegated job: ``task: llamafactory``, LLaMA-Factory's own engine
(``llamafactory-cli train`` in the job) runs it (login side, pure: no torch/transformers).

hpcft still owns the cluster half, so the job's ``train:`` carries what that half reads:
``model`` and ``dataset`` (staging, the submit's asset check, the node's lookup), ``method``,
``quantization``, ``max_seq_length``, batch and accumulation, ``deepspeed`` (the memory pre-flight,
``partition: auto``, the env's requirements). ``train.llamafactory`` carries the rest for the
worker's room (:mod:`hpcft.worker.engines.llamafactory`): the YAML's keys (paths made absolute;
the keys hpcft owns left out), the ``dataset_info.json`` entries it names, and which staged
dataset each one is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from .llamafactory_data import split_names

# keys hpcft sets in the resolved copy itself (the run folder, requeue, the collectives' timeout)
OWNED = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "engine")
# what a dataset_info.json entry names that hpcft stages or finds (one of these, in this order)
_SOURCES = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")


def _abs(value: Any, base: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def _int(value: Any, default: int, low: int = 1, high: int = 1 << 30) -> int:
    try:
        return min(high, max(low, int(value)))
    except (TypeError, ValueError):
        return default


def _float(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if out > 0 else default


def dataset_sources(lf: dict, base_dir: Path, problem: Callable[[str, str], None]) -> tuple[dict, dict]:
    """The ``dataset_info.json`` entries of ``dataset``/``eval_dataset`` and, per name, what hpcft
    stages or finds for it (a local path, or a hub id ``org/name[:subset]``). Problems (no such
    file or entry: LLaMA-Factory would fail the same way) go to ``problem(key, message)``."""
    names = {key: split_names(lf.get(key)) for key in ("dataset", "eval_dataset")}
    if not names["dataset"] and lf.get("do_train", True):
        problem("dataset", "no dataset named (LLaMA-Factory's dataset: name1,name2)")
        return {}, {}
    folder = Path(_abs(lf.get("dataset_dir", "data"), base_dir))
    info_path = folder / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem("dataset", f"{info_path} not found (LLaMA-Factory looks up its datasets there; set dataset_dir "
                           "to its folder)")
        return {}, {}
    except (OSError, ValueError) as exc:
        problem("dataset", f"{info_path} cannot be read: {exc}")
        return {}, {}
    entries: dict[str, dict] = {}
    staged: dict[str, str] = {}
    for key, listed in names.items():
        for name in listed:
            spec = info.get(name) if isinstance(info, dict) else None
            if not isinstance(spec, dict):
                problem(key, f"{name!r} is not in {info_path}")
                continue
            source = next((s for s in _SOURCES if spec.get(s)), None)
            if source is None:
                problem(key, f"{name}: its dataset_info.json entry names no file_name, hf_hub_url, ms_hub_url, "
                             "om_hub_url or script_url")
                continue
            spec = dict(spec)
            if source in ("file_name", "script_url"):
                spec[source] = _abs(spec[source], folder)
                where = spec[source]
            else:
                where = str(spec[source]) + (f":{spec['subset']}" if spec.get("subset") else "")
            entries[name], staged[name] = spec, where
    return entries, staged


def delegated_train(lf: dict, base_dir: Path, problem: Callable[[str, str], None]) -> dict:
    """The ``train:`` of a delegated job from LLaMA-Factory keys ``lf`` (``base_dir``: the YAML's
    folder, relative paths resolve against it)."""
    entries, staged = dataset_sources(lf, base_dir, problem)
    args = {k: v for k, v in lf.items() if k not in OWNED}
    args["dataset_dir"] = _abs(lf.get("dataset_dir", "data"), base_dir)
    if lf.get("media_dir"):   # where the rows' image/video/audio paths resolve, like dataset_dir
        args["media_dir"] = _abs(lf["media_dir"], base_dir)
    if lf.get("deepspeed"):
        args["deepspeed"] = _abs(lf["deepspeed"], base_dir)
    model = str(lf.get("model_name_or_path") or "")
    if model.startswith((".", "~")) or "/" in model and (base_dir / model).exists():
        model = _abs(model, base_dir)
        args["model_name_or_path"] = model
    bits = lf.get("quantization_bit")
    bnb = lf.get("quantization_method", "bnb") == "bnb" and bits in (4, 8)
    ft = lf.get("finetuning_type", "lora")
    method = "qlora" if bnb and ft == "lora" else "lora" if ft == "lora" else "full"
    train: dict[str, Any] = {
        "task": "llamafactory", "model": model,
        "dataset": list(dict.fromkeys(staged.values())) or [model],
        "method": method,
        "max_seq_length": _int(lf.get("cutoff_len"), 2048, 8, 32768),   # LLaMA-Factory's default cutoff_len
        "batch_size": _int(lf.get("per_device_train_batch_size"), 8),
        "gradient_accumulation": _int(lf.get("gradient_accumulation_steps"), 1),
        # what `hpcft show` prints of the config: LLaMA-Factory's values, its defaults where the YAML is silent
        "learning_rate": _float(lf.get("learning_rate"), 5e-5), "epochs": _float(lf.get("num_train_epochs"), 3.0),
        "seed": _int(lf.get("seed"), 42, 0), "logging_steps": _int(lf.get("logging_steps"), 500),
        # LLaMA-Factory runs DeepSpeed only when its YAML names a config; never hpcft's default
        "deepspeed": {"config": args["deepspeed"]} if lf.get("deepspeed") else False,
        "llamafactory": {"args": args, "dataset_info": entries, "datasets": staged},
    }
    if _int(lf.get("max_steps"), -1, -1) > 0:
        train["max_steps"] = _int(lf["max_steps"], 1)
    if len(train["dataset"]) == 1:
        train["dataset"] = train["dataset"][0]
    if method == "qlora":
        quant: dict[str, Any] = {"bits": bits}
        if bits == 4 and lf.get("quantization_type") in ("nf4", "fp4"):
            quant["type"] = lf["quantization_type"]
        train["quantization"] = quant
        train["deepspeed"] = None  # hpcft's check: no DeepSpeed with a 4/8-bit base
    if lf.get("trust_remote_code"):
        train["trust_remote_code"] = True
    return train


def lf_key_problem(key: str, known: frozenset, near: Callable[[str], Optional[str]]) -> Optional[str]:
    """Why ``key`` is run by neither engine (not one of LLaMA-Factory's keys), or None."""
    if key in known:
        return None
    guess = near(key)
    return ("not a LLaMA-Factory key (0.9.5); neither engine runs it"
            + (f" (did you mean {guess!r}?)" if guess else ""))
