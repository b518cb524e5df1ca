"""For the cache admin: every staged script, to read and pin in ``trusted_code:``
(:mod:`hpcft.core.trusted_code` says what the pins do and checks them).

:func:`staged_scripts` lists every staged script (a metric's code, and the ``*.py`` of staged
models, which ``train.trust_remote_code`` runs) with its owner and sha256, and :func:`pin_yaml`
writes them as a ``trusted_code:`` block to paste into the cluster config. Light: stdlib only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..core.safefs import owner_name
from ..core.trusted_code import MAX_SCRIPT_BYTES, file_owner, metric_code, model_scripts, read_script

__all__ = ["MAX_SCRIPT_BYTES", "StagedScript", "pin_yaml", "staged_scripts"]


@dataclass(frozen=True)
class StagedScript:
    """One staged ``.py``: whose asset, where, who owns the file (who staged it), its sha256 now
    (None: not a regular file, or over :data:`MAX_SCRIPT_BYTES`) and the one its manifest lists."""

    kind: str
    repo_id: str
    path: Path
    owner: str
    sha256: Optional[str]
    listed: Optional[str] = None

    @property
    def changed(self) -> bool:
        """Not the bytes that were staged (or not listed at all)."""
        return self.sha256 is None or self.sha256 != self.listed


def staged_scripts(cache) -> list[StagedScript]:
    """Every staged script of ``cache`` (a :class:`hpcft.core.store.Cache`; its trusted manifests
    only): each metric's code (:func:`metric_code`) and every ``*.py`` of each staged model,
    sorted by kind, repo id and path. ``hpcft cache doctor`` prints them for an admin to read and
    pin, e.g.::

        from hpcft.stage.trusted_code import pin_yaml, staged_scripts
        scripts = staged_scripts(Cache(settings.cache))
        for s in scripts:
            print(f"{s.kind} {s.repo_id}: {s.path} sha256 {s.sha256} (staged by {s.owner})"
                  + (" CHANGED since staging" if s.changed else ""))
        print(pin_yaml(s for s in scripts if s.kind == "metric" and not s.changed))
    """
    out: list[StagedScript] = []
    for m in cache.manifests():
        kind, repo_id, folder = m.get("kind"), m.get("repo_id"), m.get("path")
        if kind not in ("metric", "model") or not isinstance(repo_id, str) or not isinstance(folder, str):
            continue
        listed = {f.get("path"): f.get("sha256") for f in m.get("files") or [] if isinstance(f, dict)}
        root = Path(folder)
        paths = metric_code(root) if kind == "metric" else model_scripts(root)
        for path in paths:
            try:
                data, st = read_script(path)
                digest, owner = hashlib.sha256(data).hexdigest(), owner_name(st.st_uid)
            except OSError:
                digest, owner = None, file_owner(path)
            out.append(StagedScript(kind, repo_id, path, owner, digest, listed.get(path.relative_to(root).as_posix())))
    return sorted(out, key=lambda s: (s.kind, s.repo_id, str(s.path)))


def pin_yaml(scripts: Iterable[StagedScript]) -> str:
    """A ``trusted_code:`` block pinning ``scripts`` (one comment per hash naming file and owner)."""
    lines = ["trusted_code:"]
    by_asset: dict[str, list[StagedScript]] = {}
    for s in scripts:
        if s.sha256 is not None:
            by_asset.setdefault(s.repo_id, []).append(s)
    for repo_id, items in sorted(by_asset.items()):
        lines.append(f"  {repo_id}:")
        lines += [f"    - {s.sha256}  # {s.path.name}, staged by {s.owner}" for s in items]
    return "\n".join(lines) + "\n"
