"""The YAML ``llamafactory-cli train`` reads: the user's keys with what hpcft owns put in, written
into the run folder (``llamafactory/train.yaml`` beside its ``dataset_info.json``); the user's
file is never touched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from hpcft.core.atomic import atomic_write_json, atomic_write_text

# the collectives wait this long (s) while rank 0 tokenizes: LLaMA-Factory's 180 min, never less
DDP_TIMEOUT_S = 180 * 60
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_HUB_SOURCES = ("hf_hub_url", "ms_hub_url", "om_hub_url")
_MEDIA = ("images", "videos", "audios")


class DatasetInfo(dict):
    """The job's dataset_info.json entries; ``media_dir``: the staged folder of a hub dataset whose
    rows name media files (``hpcft stage --job`` fetched them into it, at the repo's own paths)."""

    media_dir: Optional[str] = None


def last_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest complete ``checkpoint-N`` folder LLaMA-Factory's Trainer left (one with its
    trainer_state.json: a checkpoint cut short by the stop has none), or None."""
    found = []
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            m = _CHECKPOINT.match(p.name)
            if m and p.is_dir() and (p / "trainer_state.json").is_file():
                found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def checkpoint_step(path: Optional[Path]) -> int:
    return int(_CHECKPOINT.match(path.name).group(1)) if path is not None else 0


def dataset_info(spec: dict, staged: dict[str, Path]) -> DatasetInfo:
    """The job's ``dataset_info.json`` entries with each hub dataset pointed at its staged folder
    (LLaMA-Factory's ``script_url``: ``load_dataset`` on a local folder, offline); local files keep
    their absolute paths."""
    out = DatasetInfo()
    for name, entry in spec["dataset_info"].items():
        entry = dict(entry)
        path = staged.get(spec["datasets"].get(name, ""))
        if any(entry.get(k) for k in _HUB_SOURCES) and path is not None:
            for k in _HUB_SOURCES:
                entry.pop(k, None)
            entry["script_url"] = str(path)
            columns = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
            if out.media_dir is None and any(columns.get(k) for k in _MEDIA):
                out.media_dir = str(path)
        out[name] = entry
    return out


def resolved_args(spec: dict, *, model: Path, output_dir: Path, data_dir: Path,
                  resume: Optional[Path]) -> dict[str, Any]:
    """LLaMA-Factory's keys for this leg: the user's, then what hpcft owns."""
    args = dict(spec["args"])
    # LLaMA-Factory joins media paths to media_dir, by default dataset_dir: the user's folder, not the run's
    args["media_dir"] = str(args.get("media_dir") or args["dataset_dir"])
    args["model_name_or_path"] = str(model)
    args["dataset_dir"] = str(data_dir)
    args["output_dir"] = str(output_dir)
    args["overwrite_output_dir"] = False
    args["ddp_timeout"] = max(int(args.get("ddp_timeout") or 0), DDP_TIMEOUT_S)
    if resume is not None:
        args["resume_from_checkpoint"] = str(resume)
    else:
        args.pop("resume_from_checkpoint", None)
    report = args.get("report_to")
    if report in (None, "all") or report == []:
        args["report_to"] = "none"   # transformers' default "all" would try every tracker installed
    return args


def write(folder: Path, args: dict, info: dict) -> Path:
    """``folder/train.yaml`` and ``folder/data/dataset_info.json`` (atomic); returns the YAML."""
    import yaml

    if getattr(info, "media_dir", None):   # a hub dataset's media are in its staged folder
        args = {**args, "media_dir": info.media_dir}

    (folder / "data").mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "data" / "dataset_info.json", info)
    path = folder / "train.yaml"
    atomic_write_text(path, yaml.safe_dump(args, sort_keys=False))
    return path
