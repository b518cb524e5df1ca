"""The remote-code rule (:func:`remote_code`): a model that ships its own Python (GLM-4,
InternLM2.5, Baichuan2, DeepSeek-V2: ``auto_map`` in its ``config.json``, ``*.py`` files in the
snapshot) runs that code inside the job. hpcft never implies ``trust_remote_code``: such a job
is refused unless it says ``train.trust_remote_code: true``, and either way the check names
each staged ``.py`` file with its sha256, so what will run can be read and pinned first.

Login side: reads files, imports nothing heavy. Also used by ``hpcft export``/``serve`` through
:func:`model_code`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..core.trusted_code import model_scripts, read_script
from .checks import Check, Preflight

NAME = "remote code"


@dataclass
class ModelCode:
    """What of a model folder is its own code."""

    auto_map: bool                     # config.json / tokenizer_config.json name classes of their own
    files: list[tuple[str, str]]       # (relative path, sha256) of every .py file, sorted
    unread: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why): a link, too large

    @property
    def needed(self) -> bool:
        return self.auto_map or bool(self.files) or bool(self.unread)

    def listing(self) -> str:
        shown = [f"{name} (sha256 {digest})" for name, digest in self.files]
        shown += [f"{name} ({why}: not read)" for name, why in self.unread]
        return ", ".join(shown) or "no .py file staged"


def model_code(folder: Path) -> ModelCode:
    folder = Path(folder)
    auto_map = False
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = auto_map or bool(isinstance(data, dict) and data.get("auto_map"))
    files, unread = [], []
    for p in model_scripts(folder):  # regular files only, none read past 16 MiB (a sparse 1 TiB one)
        try:
            files.append((p.relative_to(folder).as_posix(),
                          hashlib.sha256(read_script(p, follow=True)[0]).hexdigest()))
        except OSError as exc:
            unread.append((p.relative_to(folder).as_posix(), str(exc)))
    return ModelCode(auto_map, files, unread)


def remote_code(p: Preflight) -> Iterator[Check]:
    """LLM jobs whose model is staged (a missing one is the staged check's): refused when the
    model ships code and the job does not say ``train.trust_remote_code: true``."""
    from ..core.assets import lookup
    from ..core.resolve import load_table
    from ..core.store import Cache

    seen: set[tuple[str, bool]] = set()
    for job in p.jobs:
        t = job.train
        if t is None or not t.is_llm or (t.model, bool(t.trust_remote_code)) in seen:
            continue
        seen.add((t.model, bool(t.trust_remote_code)))
        model = lookup("model", t.model, Cache(p.settings.cache), load_table(p.settings), base_dir=p.base_dir)
        if not model.found:
            continue
        code = model_code(model.path)
        if code.needed and not t.trust_remote_code:
            yield Check(NAME, False, f"model {t.model} ships its own code, which would run inside the job: "
                                     f"{code.listing()}; read it, then set train.trust_remote_code: true")
        elif code.needed:
            yield Check(NAME, True, f"train.trust_remote_code: true runs {t.model}'s own code: {code.listing()}")
        elif t.trust_remote_code:
            yield Check(NAME, True, f"model {t.model} ships no code of its own; trust_remote_code changes nothing")
