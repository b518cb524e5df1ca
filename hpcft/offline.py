"""The offline environment of a compute node: one definition, used by the sbatch
templates (exported in the script) and by the worker (set before any HF import).

Cache layout under the hpcft cache dir (``Settings.cache``)::

    hf/                 HF_HOME: hub/ (models, datasets repos), datasets/, modules/ (evaluate)
    modelscope/         MODELSCOPE_CACHE
    xdg/                XDG_CACHE_HOME: xdg/openmind/hub -> ../../hf/hub is the openMind hub cache
                        (openmind_hub reads only XDG_CACHE_HOME); HUB_WHITE_LIST_PATHS lets its path
                        check accept the cache wherever it is (e.g. /lustre)
    manifests/          hpcft's manifest per staged asset

``PYTHONPATH`` starts with :mod:`hpcft.offline_shim`, whose ``sitecustomize`` maps the dataset
names users type (``load_dataset("glue", "mrpc")``) to the staged copies; see docs/staging.md.
"""

from __future__ import annotations

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


# XDG_CACHE_HOME of jobs, inside the cache: openmind_hub's cache is $XDG_CACHE_HOME/openmind/hub
OPENMIND_XDG = "xdg"
OPENMIND_HUB = f"{OPENMIND_XDG}/openmind/hub"


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
        "XDG_CACHE_HOME": str(cache / OPENMIND_XDG),
        "HUB_WHITE_LIST_PATHS": str(cache),
    }


def shim_path() -> str:
    """The folder holding hpcft's import-time shim (stdlib only, no hpcft import needed)."""
    return str(Path(__file__).resolve().parent / "offline_shim")


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
