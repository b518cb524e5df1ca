"""Staged code you can check: the sha256 pins of the cluster config's ``trusted_code:``.

A staged metric is an ``evaluate`` module, Python that ``evaluate.load`` runs inside the job,
and the one staged asset no second source can vouch for (``--cross-check`` needs a mirror that
has it). Whoever staged it, any member of the cache's group, chose its code. So the cluster
config can pin, per asset, the sha256 of each script it may run::

    trusted_code:
      evaluate-metric/glue:
        - 9c7b1a...   # glue.py, 64 hex digits, as `hpcft cache doctor` prints them

With ``trusted_code`` set, a staged metric whose code is not all pinned is refused twice: by the
pre-flight (``hpcft check``/``submit``, :func:`refusals`) and by the worker right before
``evaluate.load`` (:func:`checked_copy`, which loads a private copy of exactly the bytes it
hashed, so a script swapped after the check is never run). Without it nothing changes. The
code of a metric is every top-level ``*.py`` of its folder but ``app.py`` (the Space's web page,
which ``evaluate.load`` never imports, and which is not copied either). A metric given as a
local path is the user's own file and is not checked.

For an admin: :func:`staged_scripts` lists every staged script (metric code, and the ``*.py`` of
staged models, which ``train.trust_remote_code`` runs) with its owner and sha256, and
:func:`pin_yaml` writes them as a ``trusted_code:`` block to read and paste. Light: stdlib
only (the worker imports it too).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..core.errors import HpcftError
from ..core.safefs import owner_name

MAX_SCRIPT_BYTES = 16 << 20   # a script larger than this is not read (a sparse 1 TiB file would hang)
NOT_CODE = frozenset({"app.py"})


class UntrustedCode(HpcftError):
    """A staged script whose sha256 the config's ``trusted_code`` does not pin (one line per script)."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return self.problems


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


def read_script(path: Path, *, follow: bool = False) -> tuple[bytes, os.stat_result]:
    """A script's bytes and its stat, opened without following a link (``follow``: a file link is
    followed, as in a model folder of the user's own HF cache); OSError saying why not when it is
    a link, not a regular file, or larger than :data:`MAX_SCRIPT_BYTES` (read no further)."""
    try:
        fd = os.open(path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW) | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError("is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError("is not a regular file")
        data = fh.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise OSError(f"is larger than {MAX_SCRIPT_BYTES >> 20} MiB")
    return data, st


def metric_code(folder: Path) -> list[Path]:
    """The files of a staged metric folder that ``evaluate.load`` may import, sorted."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if e.name.endswith(".py") and e.name not in NOT_CODE]


def _folder(script: Path) -> Path:
    """The metric's folder: evaluate.load is given its script, or the folder itself."""
    return Path(script) if Path(script).is_dir() else Path(script).parent


def staged_metric(script: Path, cache_root: Path) -> Optional[str]:
    """The repo id of the staged metric ``script`` belongs to (``metrics/ORG--NAME/SHA/NAME/``
    under the cache), or None for a file elsewhere (a local path: the user's own). Fail-closed:
    its folder counts as staged when it is under the cache written either way, with links
    resolved or not (a folder swapped for a link out of the cache is still checked)."""
    folder = _folder(script)
    for where in {os.path.abspath(folder), os.path.realpath(folder)}:
        for root in {os.path.abspath(cache_root), os.path.realpath(cache_root)}:
            try:
                rel = Path(where).relative_to(Path(root) / "metrics")
            except ValueError:
                continue
            if len(rel.parts) >= 3:
                return rel.parts[0].replace("--", "/")
    return None


def _refusal(repo_id: str, path: Path, digest: Optional[str], owner: str, why: str = "") -> str:
    if digest is None:
        return (f"metric {repo_id}: {path} (staged by {owner}) {why}; refused: with trusted_code set only a "
                "script read as a regular file and pinned runs")
    return (f"metric {repo_id}: {path} (sha256 {digest}, staged by {owner}) is not pinned in trusted_code; "
            f"read it, then the cluster admin pins it in the cluster config: trusted_code: {{{repo_id}: [{digest}]}}")


def _checked(script: Path, cache_root: Path, pins: dict[str, list[str]]) -> tuple[list[str], list[tuple[Path, bytes]]]:
    """(one refusal line per unpinned file, the (path, bytes) of every file that was checked)."""
    repo_id = staged_metric(script, cache_root)
    if repo_id is None:
        return [], []
    allowed = set(pins.get(repo_id, []))
    problems, files = [], []
    for path in metric_code(_folder(script)):
        try:
            data, st = read_script(path)
        except OSError as exc:
            problems.append(_refusal(repo_id, path, None, _owner(path), str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest not in allowed:
            problems.append(_refusal(repo_id, path, digest, owner_name(st.st_uid)))
        files.append((path, data))
    if not files and not problems:
        problems.append(f"metric {repo_id}: no script in {_folder(script)}; refused (trusted_code is set)")
    return problems, files


def _owner(path: Path) -> str:
    try:
        return owner_name(os.lstat(path).st_uid)
    except OSError:
        return "nobody (it is gone)"


def refusals(script: Path, cache_root: Path, pins: Optional[dict[str, list[str]]]) -> list[str]:
    """The pre-flight's check: one line per file of the staged metric of ``script`` whose sha256
    ``pins`` (the config's ``trusted_code``) does not list for it; [] when pins is None, or for a
    script outside the cache's metrics."""
    return [] if pins is None else _checked(script, cache_root, pins)[0]


def checked_copy(script: Path, cache_root: Path, pins: Optional[dict[str, list[str]]], dest: Path) -> Path:
    """The worker's check, right before ``evaluate.load``: the script to load. With ``pins`` set
    and ``script`` a staged metric, its code is read once, each file's bytes hashed and checked
    (:class:`UntrustedCode` on any not pinned), then written into the private folder ``dest``
    as ``dest/NAME/x.py`` (evaluate.load wants the folder named like its script), and that copy
    is returned: what runs is what was checked. Otherwise ``script`` itself."""
    if pins is None or staged_metric(script, cache_root) is None:
        return Path(script)
    problems, files = _checked(script, cache_root, pins)
    if problems:
        raise UntrustedCode(problems)
    folder = Path(dest) / _folder(script).name
    folder.mkdir(mode=0o700)
    for path, data in files:
        fd = os.open(folder / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    return folder if Path(script).is_dir() else folder / Path(script).name


# --------------------------------------------------------------------------- for the admin

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
                digest, owner = None, _owner(path)
            out.append(StagedScript(kind, repo_id, path, owner, digest, listed.get(path.relative_to(root).as_posix())))
    return sorted(out, key=lambda s: (s.kind, s.repo_id, str(s.path)))


def model_scripts(folder: Path) -> list[Path]:
    """Every ``*.py`` of a model folder, sorted (links to folders are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [Path(dirpath, n) for n in sorted(filenames) if n.endswith(".py")]
    return found


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
