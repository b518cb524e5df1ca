"""On the compute node, before submitit unpickles a job: could anybody but the job's own user
have written the pickle? A pickle is code, so one somebody else put there runs as you.

The batch script runs ``python -u -m hpcft.worker.pickle_guard FOLDER`` where submitit would run
``python -u -m submitit.core._submit FOLDER``. In that one process the guard finds the task's
pickle as submitit does (``<job id>_submitted.pkl``; an array task's is moved there after sbatch,
so it waits for it as submitit does), then opens the run folder, ``submitit/`` in it and the
pickle, each relative to the one before and none through a link, and judges each on its open
descriptor (``fstat``):

- all three belong to the job's user (``os.getuid()``);
- the pickle is a regular file with one name (no hard link from elsewhere) that nobody else
  may write (no group/other write bit);
- the two folders are not writable by others, or are sticky (then only an entry's owner can
  rename or replace it).

It reads the bytes it judged and hands exactly those to submitit's own ``process_job``, through
``submitit.core.utils.pickle_load``, the function submitit loads every pickle with (any other
pickle submitit loads in this process is judged the same way first). Nothing can be swapped
between the check and the load. The pickles submitit writes here (the checkpoint it requeues
from, the result) are written ``0600`` (:func:`hpcft.core.rundir.write_private_pickle`), so the
requeued job passes the same check.

A refusal is one line on stderr, in the job's log, naming the file (or folder), its owner and
mode; the task exits 97 (the batch script's ``hpcft_fail`` code) and loads nothing. The checks
use only the standard library; submitit is imported to load the pickle once they passed.
"""

from __future__ import annotations

import errno
import os
import pickle
import pwd
import stat
import sys
import time
from pathlib import Path
from typing import Any

EXIT_REFUSED = 97
WAIT_S = 60  # as submitit waits for an array task's pickle


class Refused(Exception):
    """The pickle is not trusted; the message is the one line the job's log shows."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _describe(path: str, st: os.stat_result) -> str:
    return f"{path} (owner {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})"


def _judge_folder(path: str, fd: int, pickle_path: str) -> None:
    st = os.fstat(fd)
    me = os.getuid()
    why = None
    if st.st_uid != me:
        why = f"belongs to {_user(st.st_uid)}, not to {_user(me)}, the job's user"
    elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        why = "is writable by others and not sticky, so anyone who may write there can replace the pickle"
    if why:
        raise Refused(f"hpcft: refusing to unpickle {pickle_path}: its folder {_describe(path, st)} {why}")


def _judge_file(path: str, fd: int) -> None:
    st = os.fstat(fd)
    me = os.getuid()
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != me:
        why = f"belongs to {_user(st.st_uid)}, not to {_user(me)}, the job's user: somebody else put it there"
    elif st.st_mode & 0o022:
        why = "may be written by others than its owner"
    elif st.st_nlink != 1:
        why = f"has {st.st_nlink} names (a hard link): it may be changed through another"
    if why:
        raise Refused(f"hpcft: refusing to unpickle {_describe(path, st)}: it {why}")


def _open(name: str, flags: int, dir_fd: int | None, shown: str, pickle_path: str) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link (O_DIRECTORY says ENOTDIR for one too)
            why = "is a symbolic link" if os.path.islink(shown) else "is not a folder"
        else:
            why = f"cannot be opened ({exc.strerror})"
        what = shown if shown == pickle_path else f"{pickle_path}: {shown}"
        raise Refused(f"hpcft: refusing to unpickle {what}: it {why}") from None


def read_trusted(pickle_path: str | os.PathLike) -> bytes:
    """The bytes of ``pickle_path`` if only the job's user could have written them, else
    :class:`Refused`. Its folder and that folder's parent (the run folder) are judged too."""
    path = os.path.abspath(pickle_path)
    folder = os.path.dirname(path)
    run_dir = os.path.dirname(folder)
    dir_flags = os.O_RDONLY | os.O_DIRECTORY
    run_fd = _open(run_dir, dir_flags, None, run_dir, path)
    try:
        _judge_folder(run_dir, run_fd, path)
        folder_fd = _open(os.path.basename(folder), dir_flags, run_fd, folder, path)
    finally:
        os.close(run_fd)
    try:
        _judge_folder(folder, folder_fd, path)
        # O_NONBLOCK: a FIFO put there cannot hold the job; a regular file reads as usual
        fd = _open(os.path.basename(path), os.O_RDONLY | os.O_NONBLOCK, folder_fd, path, path)
    finally:
        os.close(folder_fd)
    with os.fdopen(fd, "rb") as fh:
        _judge_file(path, fh.fileno())
        return fh.read()


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not os.path.lexists(path):
        if time.monotonic() > deadline:
            raise Refused(f"hpcft: {path}: no pickle after {WAIT_S} s (was the job submitted by hpcft?)")
        time.sleep(1)


def run(folder: str) -> None:
    """Judge this task's pickle, then run submitit's ``process_job`` on the bytes judged."""
    os.environ["SUBMITIT_FOLDER"] = folder  # as submitit's process_job sets it, before JobEnvironment
    from submitit.core import job_environment, submission, utils

    from hpcft.core.rundir import write_private_pickle

    target = Path(job_environment.JobEnvironment().paths.submitted_pickle)
    _wait_for(target)
    checked = {os.path.abspath(target): read_trusted(target)}

    def load(filename: str | os.PathLike) -> Any:
        name = os.path.abspath(filename)
        data = checked.pop(name, None)  # the bytes judged above, once; anything else is judged now
        return pickle.loads(read_trusted(name) if data is None else data)

    utils.pickle_load = load
    utils.cloudpickle_dump = write_private_pickle
    submission.process_job(folder)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage (in a batch script hpcft rendered): python -m hpcft.worker.pickle_guard SUBMITIT_FOLDER",
              file=sys.stderr)
        return 2
    try:
        run(argv[0])
    except Refused as exc:  # one write: srun forwards each write on its own, its own lines between them
        sys.stderr.write(f"{exc}\n")
        sys.stderr.flush()
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
