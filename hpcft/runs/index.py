"""Run folders and the runs index (login side).

One folder per submit under ``Settings.runs``; what lives inside is the run-folder contract
in :mod:`hpcft.core.rundir`. The index (``index.jsonl``) is append-only under a lock, so concurrent
submits never lose each other's lines; run.json is replaced atomically.

Private by default: hpcft makes ``HPCFT_HOME``, the runs root and every run folder ``0700``,
whatever the umask (a run folder holds the pickle its job unpickles: whoever can write there runs
code as you). A runs root others may write into (a lab's ``runs_dir``) is used only when it is
sticky, so nobody renames or replaces another's run (:func:`ready_runs_root`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pwd
import re
import secrets
import shlex
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ..core.atomic import atomic_write_json, file_lock, read_json
from ..core.config import hpcft_home
from ..core.errors import ConfigError, NotFoundError
from ..core.progress_log import read_jsonl
from ..core.rundir import RunPaths, make_private_dir

RERUNS = "reruns.jsonl"  # in a run folder: its reruns from the SCOW portal (RunStore.note_rerun)


@dataclass
class RunRecord:
    run_id: str
    name: str
    run_dir: str
    job_file: Optional[str]
    kind: str                      # train | script
    executor: str                  # slurm | local
    submitted_at: str
    job_id: Optional[str] = None
    state: str = "NEW"
    partition: Optional[str] = None
    sweep: Optional[str] = None        # the sweep id, for an array task of a sweep
    sweep_index: Optional[int] = None  # its array index
    rerun_of: Optional[str] = None     # the run id this run reruns (from the SCOW portal's saved job)
    launched_by: Optional[str] = None  # the SCOW portal's job that submitted this rerun (its allocation could not hold it)

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40]
    return slug or "job"


def new_run_dir(runs_root: Path, name: str) -> RunPaths:
    """Create a fresh, unique, ``0700`` run folder (mkdir is atomic: no two submits share one)."""
    runs_root = Path(runs_root)
    ready_runs_root(runs_root)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    while True:
        run_dir = runs_root / f"{stamp}-{_slug(name)}-{secrets.token_hex(2)}"
        try:
            make_private_dir(run_dir)
            return RunPaths(run_dir)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError([f"{run_dir}: cannot create the run folder: {exc.strerror}"]) from None


def ready_runs_root(root: Path) -> None:
    """The runs root exists and nobody else can replace what is in it: made ``0700`` when missing
    (``HPCFT_HOME`` too, when the root is inside it).

    An existing folder that others may write into is used only when it is sticky (``chmod +t``:
    then only an entry's owner renames or removes it), else refused with one line. The exception
    is hpcft's own folders, ``HPCFT_HOME`` and its ``runs``, when they are yours: an older hpcft
    made them under your umask (002 on clusters with a group per lab), not you on purpose, so
    their group/other write bits are taken away and the submit goes on. Read access is left as it
    is: a colleague may read a cache under ``HPCFT_HOME``. A ``runs_dir`` you configured is never
    changed: it may be shared with your group on purpose, and only you can say how."""
    home = Path(os.path.abspath(hpcft_home()))
    root = Path(os.path.abspath(root))
    ours = root == home / "runs"
    if root != home and root.is_relative_to(home):
        _ready_folder(home, "HPCFT_HOME", fix=True)
    _ready_folder(root, "runs folder" if ours else "runs_dir", fix=ours)
    RunStore(root).check()


def _ready_folder(folder: Path, role: str, fix: bool) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)  # above hpcft's folders: as any mkdir -p makes them
        make_private_dir(folder)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError([f"{role} {folder}: cannot create it: {exc.strerror}"]) from None
    try:
        st = os.stat(folder)  # a link to a scratch folder is fine: the folder it leads to is judged
    except OSError as exc:
        raise ConfigError([f"{role} {folder}: {exc.strerror}"]) from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError([f"{role} {folder}: not a folder"])
    if not mode & 0o022 or mode & stat.S_ISVTX:
        return
    if fix and st.st_uid == os.getuid():
        os.chmod(folder, mode & ~0o022)
        return
    who = "group and others" if mode & 0o022 == 0o022 else "its group" if mode & 0o020 else "others"
    raise ConfigError([f"{role} {folder} (mode {mode:04o}, owner {_user(st.st_uid)}) is writable by {who} "
                       f"but not sticky: another user could rename or replace your runs and the code they "
                       f"run; its owner can make it sticky (chmod +t {shlex.quote(str(folder))}), or set "
                       f"{'HPCFT_HOME' if role == 'HPCFT_HOME' else 'runs_dir'} to a folder of your own"])


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owned_by_me(folder: Path) -> bool:
    try:
        return os.stat(folder).st_uid == os.getuid()
    except FileNotFoundError:
        return True  # made by this user's first submit


class RunStore:
    def __init__(self, runs_root: Path):
        self.root = Path(runs_root)
        # a runs root that is not yours (a lab's sticky runs_dir): an index and a lock of your own in
        # it, index.<uid>.jsonl, since nobody else may append to yours, nor you to theirs
        tag = "" if _owned_by_me(self.root) else f".{os.getuid()}"
        self.index = self.root / f"index{tag}.jsonl"
        self.lock = self.root / f".index{tag}.lock"

    def check(self) -> None:
        """The index and its lock, where they exist, are the caller's own files. In a shared runs
        folder another user may have made them first (the sticky bit stops replacing, not creating),
        to list their runs as yours."""
        for path in (self.index, self.lock):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise ConfigError([f"{path} (owner {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}) is "
                                   f"not your own file: another user made it in the shared runs folder {self.root}; "
                                   "its owner or the folder's can remove it, or set runs_dir to a folder of your own"])

    def save(self, record: RunRecord, durable: bool = True) -> None:
        atomic_write_json(RunPaths(record.run_dir).record, asdict(record), durable=durable)

    def add(self, record: RunRecord) -> None:
        """Write run.json, then append the run to the index under the lock."""
        self.add_many([record])

    def add_many(self, records: list[RunRecord]) -> None:
        """Several runs (a sweep's tasks): each run.json, then one append under one lock."""
        lines = []
        for record in records:
            self.save(record, durable=len(records) == 1)  # a sweep's tasks: the index append below is the sync
            entry = {"run_id": record.run_id, "name": record.name, "job_id": record.job_id,
                     "submitted_at": record.submitted_at, "run_dir": record.run_dir}
            if record.sweep:
                entry["sweep"] = record.sweep
            if record.rerun_of:
                entry["rerun_of"] = record.rerun_of
            if record.launched_by:
                entry["launched_by"] = record.launched_by
            lines.append(json.dumps(entry) + "\n")
        with file_lock(self.lock):
            fd = os.open(self.index, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, "".join(lines).encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def load(self, run_dir: Path) -> RunRecord:
        data = read_json(RunPaths(run_dir).record)
        if data is None:
            raise NotFoundError(f"{run_dir}: not an hpcft run folder (no run.json)")
        return RunRecord.from_dict(data)

    def note_rerun(self, original: Path, rerun: RunRecord) -> None:
        """The original run's folder lists its reruns, one JSON line each (``reruns.jsonl``,
        appended in one write)."""
        line = json.dumps({"run_id": rerun.run_id, "job_id": rerun.job_id, "run_dir": rerun.run_dir,
                           "submitted_at": rerun.submitted_at}) + "\n"
        fd = os.open(Path(original) / RERUNS, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def reruns(self, original: Path) -> list[dict[str, Any]]:
        """The reruns the original run's folder lists, oldest first."""
        return read_jsonl(Path(original) / RERUNS)

    def entries(self) -> list[dict[str, Any]]:
        self.check()
        return read_jsonl(self.index)  # a torn line from a crashed writer is skipped: the others are still good

    def records(self, limit: Optional[int] = None) -> list[RunRecord]:
        entries = self.entries()
        if limit:
            entries = entries[-limit:]
        out = []
        for entry in entries:
            try:
                out.append(self.load(Path(entry["run_dir"])))
            except NotFoundError:
                continue  # run folder deleted by the user
        return out


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
