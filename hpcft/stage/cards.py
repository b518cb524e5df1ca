"""A staged dataset's configs as ``datasets`` sees them: ``.huggingface.yaml`` next to the card.

``datasets.load_dataset(folder, "cola")`` picks the builder (parquet, csv, json) from the data
files of the *first* config in the card's YAML (``datasets/load.py``, ``get_module``) -- for
GLUE that is ``ax`` (HF) or ``mrpc`` -- and fails with "No (supported) data files found" when
only another config was staged. The card itself stays byte-identical (its sha256 is in the
manifest); ``datasets`` reads a standalone ``.huggingface.yaml`` in the same folder and lets its
``configs:`` replace the card's, so hpcft writes one naming the configs whose files are in the
folder, in the card's own order and words. Written atomically, under a lock (two ``hpcft stage``
runs of two configs of one snapshot), and rewritten by ``hpcft cache rm``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text, file_lock
from .select import dataset_configs

REPOYAML = ".huggingface.yaml"


def _card_configs(readme: str) -> list[dict]:
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.S)
    if not m:
        return []
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs or [] if isinstance(c, dict)]


def sync_staged_configs(folder: Path, lock_dir: Path) -> Optional[Path]:
    """Write (or remove) ``folder/.huggingface.yaml`` so it lists the configs staged in ``folder``.

    Returns the file when one is needed: the card lists configs and not all of them are here."""
    import yaml

    folder = Path(folder)
    readme = folder / "README.md"
    target = folder / REPOYAML
    lock_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_dir / f"card--{folder.parent.parent.name}--{folder.name}.lock"):
        text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
        entries = _card_configs(text)
        paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        present = {name for name, files in dataset_configs(paths, text).items() if files}
        keep = [c for c in entries if str(c.get("config_name", "default")) in present]
        if not entries or not keep or len(keep) == len(entries):
            target.unlink(missing_ok=True)
            return None
        atomic_write_text(target, "# written by hpcft: the configs staged in this folder (datasets reads this\n"
                                  "# file instead of README.md's configs:, see hpcft/stage/cards.py)\n"
                          + yaml.safe_dump({"configs": keep}, sort_keys=False, allow_unicode=True))
        return target
