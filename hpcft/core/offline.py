"""The offline environment of a compute node: one definition, used by the sbatch
templates (exported in the script) and by the worker (set before any HF import).

Cache layout under the hpcft cache dir (``Settings.cache``)::

    hf/                 HF_HOME: hub/ (models, datasets repos), datasets/, modules/ (evaluate)
    modelscope/         MODELSCOPE_CACHE
                        (openmind_hub reads only XDG_CACHE_HOME); HUB_WHITE_LIST_PATHS lets its path
                        check accept the cache wherever it is (e.g. /lustre)
    manifests/          hpcft's manifest per staged asset

``PYTHONPATH`` starts with :mod:`hpcft.offline_shim`, whose ``sitecustomize`` maps the dataset
names users type (``load_dataset("glue", "mrpc")``) to the staged copies; see docs/staging.md.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_FLAGS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",
    "DO_NOT_TRACK": "1",
}


# script jobs' XDG_CACHE_HOME, inside the run folder: openmind_hub's cache is $XDG_CACHE_HOME/openmind/hub
RUN_XDG = "xdg"


def cache_env(cache: Path) -> dict[str, str]:
    """Variables that point the HF, ModelScope and openMind hub libraries at the hpcft cache."""
    cache = Path(cache)
    hf = cache / "hf"
    return {
        "HPCFT_CACHE": str(cache),
        "HF_HOME": str(hf),
        "HF_HUB_CACHE": str(hf / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(hf / "hub"),
        "HF_DATASETS_CACHE": str(hf / "datasets"),
        "HF_MODULES_CACHE": str(hf / "modules"),
        "MODELSCOPE_CACHE": str(cache / "modelscope"),
    }


def openmind_env(cache: Path, run_dir: Path) -> dict[str, str]:
    """For script jobs: ``openmind_hub`` (the Modelers client) has no cache setting but
    ``XDG_CACHE_HOME``. It points at a folder of the run whose ``openmind/hub`` is a link to the
    staged ``hf/hub`` (same ``refs/`` + ``snapshots/`` layout, so repos resolve by hub name), so
    other tools' XDG caches stay private to the run instead of landing in the shared cache.
    ``HUB_WHITE_LIST_PATHS`` lets the client accept both places (it refuses paths outside /tmp
    and ~ otherwise)."""
    return {"XDG_CACHE_HOME": str(Path(run_dir) / RUN_XDG), "HUB_WHITE_LIST_PATHS": f"{cache},{run_dir}"}


def link_openmind_cache(cache: Path, run_dir: Path) -> Path:
    """``<run>/xdg/openmind/hub -> <cache>/hf/hub`` (see :func:`openmind_env`)."""
    link = Path(run_dir) / RUN_XDG / "openmind" / "hub"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(Path(cache).resolve() / "hf" / "hub", link)
    return link


def shim_path() -> str:
    """The folder holding hpcft's import-time shim (stdlib only, no hpcft import needed)."""
    return str(Path(__file__).resolve().parent.parent / "offline_shim")


def join_paths(*parts: str | None) -> str:
    """``PYTHONPATH``-style lists joined in order, empty entries and repeats dropped (first wins).

    The one rule for ``PYTHONPATH``'s order: hpcft's shim first, then the job's own entries
    (``env.vars.PYTHONPATH``), then whatever the node's environment already had."""
    out: list[str] = []
    for part in parts:
        for item in (part or "").split(":"):
            if item and item not in out:
                out.append(item)
    return ":".join(out)


def offline_env(cache: Path, pythonpath: str | None = None) -> dict[str, str]:
    """Everything a job on a compute node without internet exports; ``pythonpath`` is the
    job's own PYTHONPATH, which goes after the shim."""
    return {**OFFLINE_FLAGS, **cache_env(cache), "PYTHONPATH": join_paths(shim_path(), pythonpath)}
