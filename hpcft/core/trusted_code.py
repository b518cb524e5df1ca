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
local path is the user's own file and is not checked. What an admin reads to pin:
:func:`hpcft.stage.trusted_code.staged_scripts`.

Shared by the login side and the worker. Light: stdlib only.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Optional

from .errors import HpcftError
from .safefs import owner_name

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


def model_scripts(folder: Path) -> list[Path]:
    """Every ``*.py`` of a model folder, sorted (links to folders are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [Path(dirpath, n) for n in sorted(filenames) if n.endswith(".py")]
    return found


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
            problems.append(_refusal(repo_id, path, None, file_owner(path), str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest not in allowed:
            problems.append(_refusal(repo_id, path, digest, owner_name(st.st_uid)))
        files.append((path, data))
    if not files and not problems:
        problems.append(f"metric {repo_id}: no script in {_folder(script)}; refused (trusted_code is set)")
    return problems, files


def file_owner(path: Path) -> str:
    """Who owns the file (who staged it), not following a link."""
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
