"""The offline environment of a compute node: one definition, used by the sbatch
templates (exported in the script) and by the worker (set before any HF import).

Shared: only what ``hpcft stage`` wrote and manifested, under the hpcft cache dir (``Settings.cache``)::

    hf/hub/             HF_HUB_CACHE: models' and datasets' snapshots (read by jobs, written by stage)
    metrics/            staged evaluate scripts        manifests/   one per staged asset

Private to the user (``$HPCFT_HOME/runtime``, 0700, :func:`private_runtime`): every folder a
library writes *at run time*, because what one user's job writes there another user's job would
import or read::

    hf/                 HF_HOME (token, xet and assets caches)
    hf/datasets/        HF_DATASETS_CACHE: datasets' Arrow cache (a shared one could be rewritten)
    hf/modules/         HF_MODULES_CACHE: evaluate's and transformers' copied module code
                        (a shared one is code another user's job imports)
    modelscope/         MODELSCOPE_CACHE
    torch_extensions/   TORCH_EXTENSIONS_DIR: compiled DeepSpeed ops (shared objects that get loaded)

(openmind_hub reads only XDG_CACHE_HOME; HUB_WHITE_LIST_PATHS lets its path check accept the cache
wherever it is, e.g. /lustre.)

``PYTHONPATH`` starts with :mod:`hpcft.offline_shim`, whose ``sitecustomize`` maps the dataset
names users type (``load_dataset("glue", "mrpc")``) to the staged copies; see docs/staging.md.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

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


RUNTIME = "runtime"


def private_runtime(home: Optional[Path] = None) -> Path:
    """The user's own folder for run-time caches: ``$HPCFT_HOME/runtime``."""
    return Path(home or os.environ.get("HPCFT_HOME") or "~/hpcft").expanduser() / RUNTIME


def cache_env(cache: Path, private: Optional[Path] = None) -> dict[str, str]:
    """Variables that point the HF, ModelScope and openMind hub libraries at the hpcft cache
    (read-only snapshots) and at the user's own run-time caches (``private``)."""
    cache, private = Path(cache), Path(private or private_runtime())
    return {
        "HPCFT_CACHE": str(cache),
        "HPCFT_RUNTIME": str(private),
        "HF_HOME": str(private / "hf"),
        "HF_HUB_CACHE": str(cache / "hf" / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(cache / "hf" / "hub"),
        "HF_DATASETS_CACHE": str(private / "hf" / "datasets"),
        "HF_MODULES_CACHE": str(private / "hf" / "modules"),
        "MODELSCOPE_CACHE": str(private / "modelscope"),
        "TORCH_EXTENSIONS_DIR": str(private / "torch_extensions"),
    }


def ensure_private(folder: Path) -> Path:
    """Create ``folder`` (and missing parents) 0700 whatever the umask, and make sure it is the
    caller's own and nobody else can write or enter it. A folder of another user, a link, or one
    others can write to and that is not ours is refused (OSError with one line)."""
    folder = Path(folder)
    todo = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        todo.append(p)
        p = p.parent
    for d in reversed(todo):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{folder}: not a folder of its own (a link or a file); refused as a private cache")
    if st.st_uid != os.getuid():
        raise OSError(f"{folder}: belongs to uid {st.st_uid}, not you; refused as a private cache")
    if stat.S_IMODE(st.st_mode) & 0o077:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return folder


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


def offline_env(cache: Path, pythonpath: str | None = None, private: Optional[Path] = None) -> dict[str, str]:
    """Everything a job on a compute node without internet exports; ``pythonpath`` is the
    job's own PYTHONPATH, which goes after the shim."""
    return {**OFFLINE_FLAGS, **cache_env(cache, private), "PYTHONPATH": join_paths(shim_path(), pythonpath)}
