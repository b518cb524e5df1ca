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

import os
import re
import stat
from pathlib import Path
from typing import Optional

from ..core.safefs import Dir, Lock, Modes, rel_parts
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


def repo_yaml(readme: str, paths: list[str]) -> Optional[bytes]:
    """What ``.huggingface.yaml`` holds for a folder with these files and card, or None when the
    folder needs none (the card lists no configs, or all of them are here). Pure: the stage
    writes it, and the check of another user's copy compares it byte for byte."""
    import yaml

    entries = _card_configs(readme)
    present = {name for name, files in dataset_configs([p for p in paths if p != REPOYAML], readme).items() if files}
    keep = [c for c in entries if str(c.get("config_name", "default")) in present]
    if not entries or not keep or len(keep) == len(entries):
        return None
    return ("# written by hpcft: the configs staged in this folder (datasets reads this\n"
            "# file instead of README.md's configs:, see hpcft/stage/cards.py)\n"
            + yaml.safe_dump({"configs": keep}, sort_keys=False, allow_unicode=True)).encode()


def sync_staged_configs(cache, folder: Path, modes: Optional[Modes] = None) -> Optional[Path]:
    """Write (or remove) ``folder/.huggingface.yaml`` so it lists the configs staged in ``folder``
    (an asset folder of ours in ``cache``), through descriptors, under the folder's lock.

    Returns the file when one is needed: the card lists configs and not all of them are here."""

    modes = modes or Modes()
    folder = Path(folder)
    rel = rel_parts(folder, cache.root)
    with Dir.open_root(cache.root) as root, root.sub("locks", create=True, modes=modes) as locks, \
            Lock(locks, f"card--{folder.parent.parent.name}--{folder.name}.lock"), \
            root.sub(rel, shared=False) as d:
        st = d.lstat("README.md")
        text = ""
        if st is not None and stat.S_ISREG(st.st_mode):
            with os.fdopen(d.open("README.md", os.O_RDONLY), "rb") as fh:
                text = fh.read(16 << 20).decode("utf-8", "replace")
        data = repo_yaml(text, list(d.walk_files()))
        if data is None:
            if d.lstat(REPOYAML) is not None:
                d.unlink(REPOYAML)
            return None
        d.write_atomic(REPOYAML, data, modes)
        return folder / REPOYAML
