"""Which files of a repo a job needs. Pure functions over a listing of paths.

Models: config and tokenizer files, weights as safetensors (+ index) when present,
otherwise ``pytorch_model*.bin``; never TF/Flax/ONNX/CoreML/Rust/OpenVINO/GGUF.
Datasets: the card/metadata plus the requested config's data files (from the card's
YAML ``configs:``, else a folder named after the config, else every data file).
Metrics: the evaluate module's Python files, card and requirements (not the Space app).
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Iterable, Optional

# weights in formats a PyTorch job never reads
DENY_EXT = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".mlmodel", ".tflite", ".gguf", ".ggml",
            ".pb", ".keras", ".ckpt.index", ".nemo")
DENY_DIRS = ("onnx", "coreml", "openvino", "tflite", "tf", "flax", "mlx", "gguf", ".git",
             "original")  # Llama repos: Meta's own format (a 16 GB consolidated.00.pth) in original/
# small files that make up a model besides its weights
MODEL_EXTRA = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py", "*.spm", "*.vocab",
               "*.bpe", "tokenizer*", "*.yaml")
SKIP_ALWAYS = (".gitattributes", "README.md", "LICENSE*", "*.png", "*.jpg", "*.gif", "*.md", "*.pdf")
DATA_EXT = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".txt", ".zip", ".gz", ".bz2", ".xz",
            ".zst", ".tar")
DATASET_META = ("README.md", "dataset_infos.json", "dataset_info.json", "dataset_dict.json")


def _deny(path: str) -> bool:
    parts = path.split("/")
    low = path.lower()
    return (any(p in DENY_DIRS for p in parts[:-1]) or low.endswith(DENY_EXT)
            or low.endswith(".mlpackage") or "/.mlpackage" in low or ".mlpackage/" in low)


def _match(path: str, patterns: Iterable[str]) -> bool:
    name = posixpath.basename(path)
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p) for p in patterns)


SAFETENSORS_INDEX = "model.safetensors.index.json"


def shards_of(index_text: str) -> set[str]:
    """The weight files a ``*.safetensors.index.json`` names (its ``weight_map`` values)."""
    import json

    try:
        data = json.loads(index_text)
    except ValueError:
        return set()
    wm = data.get("weight_map") if isinstance(data, dict) else None
    return {v for v in wm.values() if isinstance(v, str)} if isinstance(wm, dict) else set()


def select_model(paths: Iterable[str], shards: Optional[set[str]] = None) -> set[str]:
    """``shards``: the files the safetensors index names; when given, only those weights are
    kept (a sharded checkpoint next to a stray ``consolidated.safetensors`` or an older copy)."""
    paths = [p for p in paths if not _deny(p)]
    safetensors = [p for p in paths if p.endswith(".safetensors")]
    if shards:
        named = [p for p in safetensors if p in shards]
        if len(named) == len(shards):  # an index that names missing files is not trusted
            safetensors = named
    keep: set[str] = set()
    if safetensors:
        keep.update(safetensors)
    else:
        keep.update(p for p in paths if re.search(r"(^|/)pytorch_model[^/]*\.bin$", p))
        if not keep:  # other torch checkpoints (e.g. consolidated.*.pth, *.pt) as a last resort
            keep.update(p for p in paths if p.endswith((".pth", ".pt", ".bin")) and "optimizer" not in p)
    for p in paths:
        if p in keep or _match(p, SKIP_ALWAYS):
            continue
        if p.endswith(".index.json"):
            # index of the weights we keep only
            if (safetensors and p.endswith("safetensors.index.json")) or \
               (not safetensors and p.endswith("bin.index.json")):
                keep.add(p)
            continue
        if p.endswith((".bin", ".pth", ".pt", ".safetensors")):
            continue
        if _match(p, MODEL_EXTRA):
            keep.add(p)
    return keep


def parse_card_configs(readme: str) -> dict[str, list[str]]:
    """``{config_name: [data file patterns]}`` from a dataset card's YAML front matter."""
    from ..core.errors import ConfigError
    from ..core.yamlfile import yaml_load

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.S)
    if not m:
        return {}
    try:  # a card comes from the hub: read it with the same bounds as a hostile job file
        meta = yaml_load(m.group(1), "dataset card") or {}
    except ConfigError:
        return {}
    if not isinstance(meta, dict):
        return {}
    out: dict[str, list[str]] = {}
    for cfg in meta.get("configs") or []:
        if not isinstance(cfg, dict):
            continue
        name = str(cfg.get("config_name", "default"))
        files = cfg.get("data_files")
        pats: list[str] = []
        if isinstance(files, str):
            pats = [files]
        elif isinstance(files, list):
            for item in files:
                if isinstance(item, str):
                    pats.append(item)
                elif isinstance(item, dict):
                    p = item.get("path")
                    pats += [p] if isinstance(p, str) else list(p or [])
        elif isinstance(files, dict):
            for v in files.values():
                pats += [v] if isinstance(v, str) else list(v or [])
        data_dir = cfg.get("data_dir")
        if not pats and data_dir:
            pats = [f"{str(data_dir).strip('/')}/**"]
        out[name] = pats
    return out


def _glob(pattern: str, path: str) -> bool:
    # datasets' patterns are fsspec globs: "*" stays within a folder, "**" crosses folders
    rx = re.escape(pattern.strip("/")).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
    rx = rx.replace(r"\?", "[^/]")
    return re.fullmatch(rx, path) is not None


def dataset_configs(paths: Iterable[str], readme: Optional[str]) -> dict[str, list[str]]:
    """Every config a dataset repo offers -> its data files."""
    paths = [p for p in paths if not p.startswith(".")]
    data = [p for p in paths if p.lower().endswith(DATA_EXT) and posixpath.basename(p) not in DATASET_META]
    card = parse_card_configs(readme) if readme else {}
    if card:
        return {name: sorted(p for p in data if any(_glob(pat, p) for pat in pats)) for name, pats in card.items()}
    # no YAML configs: folders of data files are configs (parquet conversions), else one "default"
    dirs: dict[str, list[str]] = {}
    for p in data:
        if "/" in p:
            dirs.setdefault(p.split("/", 1)[0], []).append(p)
    if dirs and not any("/" not in p for p in data) and not set(dirs) <= {"data", "default"}:
        return {k: sorted(v) for k, v in dirs.items()}
    return {"default": sorted(data)}


def select_dataset(paths: Iterable[str], readme: Optional[str], config: Optional[str]) -> tuple[set[str], list[str]]:
    """(files to fetch, available configs). Files is empty when ``config`` is unknown."""
    paths = list(paths)
    configs = dataset_configs(paths, readme)
    names = sorted(configs)
    if config is None:
        config = "default" if "default" in configs or len(configs) == 1 else None
        if config is None:
            return set(), names
        config = config if config in configs else names[0]
    if config not in configs:
        return set(), names
    meta = {p for p in paths if p in DATASET_META}
    return set(configs[config]) | meta, names


def select_metric(paths: Iterable[str], module: str) -> set[str]:
    keep = set()
    for p in paths:
        if "/" in p or p in ("app.py", ".gitattributes"):
            continue
        if p.endswith(".py") or p in ("README.md", "requirements.txt"):
            keep.add(p)
    return keep
