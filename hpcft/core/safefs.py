"""File operations in a folder that other users can write to (the shared cache).

A group-shared cache is hostile ground: any member can create names in its shared folders,
including symbolic links to somebody's home. Every operation here therefore works on open
folder descriptors, one component at a time, with ``O_NOFOLLOW``:

* a folder is entered with ``openat(O_DIRECTORY | O_NOFOLLOW)``: a link planted in its place
  fails with ELOOP/ENOTDIR and is reported by name (:class:`Planted`), never followed;
* files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under names nobody can predict,
  permissions are set with ``fchmod``/``fchown`` on the open descriptor, and renames take
  both folders as descriptors, so a folder swapped after it was opened changes nothing;
* a shared folder that the group can write must be sticky (only an entry's owner may rename
  or remove it); ours get the bit, anybody else's without it are refused with the fix;
* temporary folders come from a random name, mode 0700, owned by the caller.

Paths are kept only for messages. Light: stdlib only.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .errors import StageError

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ME = os.geteuid()


class Planted(StageError):
    """A link or foreign object where the cache expects its own folder or file."""


def owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass(frozen=True)
class Modes:
    """Modes for the cache. With a group: shared folders 3775 (setgid + sticky: the group can add
    entries, only an entry's owner can rename or remove it), a staged asset's folders 2755 and its
    files 0644 (the group reads, only the stager writes). Without one: 0755 and 0644."""

    gid: Optional[int] = None

    @property
    def shared_dir(self) -> int:
        return 0o3775 if self.gid is not None else 0o755

    @property
    def asset_dir(self) -> int:
        return 0o2755 if self.gid is not None else 0o755

    file: int = 0o644

    def apply(self, fd: int, mode: int, where: str) -> None:
        st = os.fstat(fd)
        if st.st_uid != ME:
            return  # not ours: leave it (the doctor reports what is wrong)
        if self.gid is not None and st.st_gid != self.gid:
            try:
                os.fchown(fd, -1, self.gid)
            except PermissionError:
                raise StageError(f"cannot give {where} to group {self.gid}: you must be a member of "
                                 "cache_group") from None
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)


def _planted(path: str, exc: OSError) -> Planted:
    return Planted(f"{path}: is a symbolic link or not a folder where the cache expects its own folder "
                   f"({os.strerror(exc.errno or 0)}); refused without following it. Remove it (its owner or the "
                   "admin: hpcft cache doctor) and run the command again")


class Dir:
    """An open folder. ``path`` is for messages; every operation goes through ``fd``."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    @classmethod
    def open_root(cls, root: Path) -> "Dir":
        # the root itself may be a link an admin made (/scratch -> /gpfs/...): it is followed once
        return cls(os.open(str(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), str(root))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Dir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def join(self, rel: str) -> str:
        return f"{self.path.rstrip('/')}/{rel}"

    # ---- folders -----------------------------------------------------------------------
    def sub(self, rel: str, *, create: bool = False, modes: Optional[Modes] = None, shared: bool = True) -> "Dir":
        """Enter ``rel`` (``a/b/c``) one component at a time without following links; with
        ``create``, make the missing folders (shared or asset mode) as it goes."""
        fd, path = os.dup(self.fd), self.path
        try:
            for part in [p for p in rel.split("/") if p]:
                path = f"{path.rstrip('/')}/{part}"
                nfd, made = _enter(fd, part, path, create, shared)
                os.close(fd)
                fd = nfd
                if made and modes is not None:
                    modes.apply(fd, modes.shared_dir if shared else modes.asset_dir, path)
                elif shared:
                    _check_shared(fd, path, modes)
            return Dir(fd, path)
        except BaseException:
            os.close(fd)
            raise

    def mkdtemp(self, prefix: str) -> tuple[str, "Dir"]:
        """A new private folder (0700, ours) under a name nobody can predict."""
        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(8)}"
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
            except FileExistsError:
                continue
            return name, self.sub(name, shared=False)
        raise StageError(f"{self.path}: could not create a temporary folder")

    def own_private(self, name: str) -> Optional["Dir"]:
        """``name`` opened when it is a real folder owned by us and private to us (a temp folder of
        ours that an earlier run left to resume), else None."""
        try:
            d = self.sub(name, shared=False)
        except (OSError, StageError):
            return None
        st = os.fstat(d.fd)
        if st.st_uid != ME or stat.S_IMODE(st.st_mode) & 0o077:
            d.close()
            return None
        return d

    def entries(self) -> list[str]:
        return os.listdir(self.fd)

    # ---- files ---------------------------------------------------------------------------
    def lstat(self, rel: str) -> Optional[os.stat_result]:
        parent, name = self._split(rel)
        if parent is None:
            return None
        try:
            if parent is self:
                return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            if parent is not self and parent is not None:
                parent.close()

    def _split(self, rel: str) -> tuple[Optional["Dir"], str]:
        head, _, name = rel.rpartition("/")
        if not head:
            return self, name
        try:
            return self.sub(head, shared=False), name
        except FileNotFoundError:
            return None, name

    def open(self, rel: str, flags: int, mode: int = 0o600, *, create_dirs: bool = False) -> int:
        """``openat`` with ``O_NOFOLLOW`` on every component of ``rel``."""
        head, _, name = rel.rpartition("/")
        parent = self.sub(head, create=create_dirs, shared=False) if head else None
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=(parent or self).fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Planted(f"{self.join(rel)}: is a symbolic link; refused without following it. Remove it "
                              "(its owner or the admin: hpcft cache doctor) and run the command again") from None
            raise
        finally:
            if parent is not None:
                parent.close()

    def unlink(self, rel: str) -> None:
        head, _, name = rel.rpartition("/")
        if not head:
            os.unlink(name, dir_fd=self.fd)
            return
        with self.sub(head, shared=False) as parent:
            os.unlink(name, dir_fd=parent.fd)

    def rename_file(self, src_rel: str, dst_rel: str) -> None:
        """Rename within this folder tree (both names relative to it, same parent folder)."""
        head, _, a = src_rel.rpartition("/")
        head2, _, b = dst_rel.rpartition("/")
        if head != head2:
            raise ValueError("rename_file: not the same folder")
        if not head:
            os.replace(a, b, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return
        with self.sub(head, shared=False) as parent:
            os.replace(a, b, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)

    def write_atomic(self, name: str, data: bytes, modes: Modes, mode: Optional[int] = None) -> None:
        """Write ``name`` in this folder: a new file under a random name, fsync, fchmod, rename."""
        tmp = f".{name[:60]}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, O_NEW, 0o600, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fd)
            modes.apply(fd, modes.file if mode is None else mode, self.join(name))
        finally:
            os.close(fd)
        try:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException as exc:
            os.unlink(tmp, dir_fd=self.fd)
            if isinstance(exc, PermissionError):
                st = self.lstat(name)
                who = owner_name(st.st_uid) if st else "another user"
                raise StageError(f"{self.join(name)}: belongs to {who}; you cannot replace it (the folder is "
                                 f"sticky). Ask {who} or the cache admin") from None
            raise

    def symlink(self, target: str, name: str) -> None:
        """``name -> target`` (a sibling name), made under a random name and renamed into place."""
        tmp = f".{name[:60]}.{secrets.token_hex(6)}.lnk"
        os.symlink(target, tmp, dir_fd=self.fd)
        try:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError:
            os.unlink(tmp, dir_fd=self.fd)
            raise

    def fix_tree(self, modes: Modes) -> None:
        """Asset modes on this folder and everything below it, through descriptors; links are
        neither followed nor changed."""
        modes.apply(self.fd, modes.asset_dir, self.path)
        for _root, dirs, files, rootfd in os.fwalk(".", dir_fd=self.fd, follow_symlinks=False):
            for name in dirs:
                try:
                    fd = os.open(name, O_DIR, dir_fd=rootfd)
                except OSError:
                    continue  # a link: fwalk does not descend, and we do not touch it
                try:
                    modes.apply(fd, modes.asset_dir, name)
                finally:
                    os.close(fd)
            for name in files:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=rootfd)
                except OSError:
                    continue  # a link or a special file: left alone
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        modes.apply(fd, modes.file, name)
                finally:
                    os.close(fd)

    def walk_files(self) -> Iterator[str]:
        """Relative paths of the regular files below (links are not followed)."""
        for root, _dirs, files, rootfd in os.fwalk(".", dir_fd=self.fd, follow_symlinks=False):
            for name in files:
                st = os.stat(name, dir_fd=rootfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    yield os.path.normpath(os.path.join(root, name))


def _enter(fd: int, part: str, path: str, create: bool, shared: bool) -> tuple[int, bool]:
    """Open (or make and open) one folder below ``fd``; (its descriptor, whether we made it).

    Another user's process may have just made a folder it has not yet given its shared mode (the
    moment between ``mkdir`` and ``fchmod``): a permission error then is retried for a few
    seconds before it counts."""
    import time

    deadline = time.monotonic() + 3.0
    while True:
        made = False
        try:
            try:
                return os.open(part, O_DIR, dir_fd=fd), False
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o755 if shared else 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
                return os.open(part, O_DIR, dir_fd=fd), made
        except PermissionError:
            if not create or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _planted(path, exc) from None
            raise


def _check_shared(fd: int, path: str, modes: Optional[Modes]) -> None:
    """A folder others can write to must be sticky; ours get the bit, anybody else's are refused."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o022 or mode & stat.S_ISVTX:
        return
    if st.st_uid == ME:
        os.fchmod(fd, mode | stat.S_ISVTX)
        return
    who = owner_name(st.st_uid)
    raise Planted(f"{path}: writable by other users but not sticky, so they could replace what you stage "
                  f"there; ask {who} (its owner) or the cache admin to run `hpcft cache doctor --fix`")


def rename(src: Dir, src_name: str, dst: Dir, dst_name: str) -> None:
    os.rename(src_name, dst_name, src_dir_fd=src.fd, dst_dir_fd=dst.fd)


def rel_parts(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as ``a/b/c``; raises when it is not below it."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == "." or rel.startswith(".."):
        raise StageError(f"{path}: not inside the cache {root}")
    return rel.replace(os.sep, "/")


def remove_tree(parent: Dir, name: str) -> None:
    """``rm -rf parent/name`` through descriptors: links inside are removed, never followed; a link
    at ``name`` itself is removed as a link."""
    st = parent.lstat(name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent.fd)
        return
    with parent.sub(name, shared=False) as d:
        for _root, dirs, files, rootfd in os.fwalk(".", dir_fd=d.fd, topdown=False, follow_symlinks=False):
            for f in files:
                os.unlink(f, dir_fd=rootfd)
            for sub in dirs:
                if stat.S_ISLNK(os.stat(sub, dir_fd=rootfd, follow_symlinks=False).st_mode):
                    os.unlink(sub, dir_fd=rootfd)
                else:
                    os.rmdir(sub, dir_fd=rootfd)
    os.rmdir(name, dir_fd=parent.fd)


class Lock:
    """An exclusive ``flock`` on ``folder/name``, opened without following links (a link planted in
    its place is refused by name). Works across users: a lock file another user created is opened
    read-only, which is enough for ``flock``.

    Waiting names the holder (:meth:`holder`): ``on_wait(seconds, where)`` is called after 2 s and
    every 30 s, ``where`` being the path, plus ``, held by USER (pid N)`` the first time and when the
    holder changes; after ``timeout`` s (600 unless given, as ``locks.wait_s``; None: no limit) it
    gives up in one line naming the holder: from ``/proc/locks`` (this host), else the record
    ``user=U pid=N host=H`` a holder writes into a lock file it owns (another host; believed only
    when U owns the file), else the file's owner."""

    RECORD = re.compile(r"user=(\S+) pid=(\d+) host=(\S+)\n?")

    @dataclass(frozen=True)
    class Holder:
        user: str
        pid: Optional[int] = None
        host: Optional[str] = None   # another host's (from the file's record); None: this one

        def __str__(self) -> str:
            if self.pid is None:
                return f"{self.user} (pid unknown: the lock file's owner)"
            return f"{self.user} (pid {self.pid}{f' on {self.host}' if self.host else ''})"

    def __init__(self, folder: Dir, name: str, *, on_wait=None, timeout: Optional[float] = 600):
        self.folder, self.name, self.on_wait, self.timeout = folder, name, on_wait, timeout
        self.fd = -1
        self.recorded = False   # our user/pid are in the file (cleared again on release)

    def _open(self, path: str) -> None:
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        while self.fd < 0:
            try:
                try:  # read-write where we may (our own file: the record), else read-only
                    self.fd = os.open(self.name, os.O_RDWR | flags, dir_fd=self.folder.fd)
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise
                    self.fd = os.open(self.name, os.O_RDONLY | flags, dir_fd=self.folder.fd)
            except FileNotFoundError:
                try:
                    self.fd = os.open(self.name, (O_NEW & ~os.O_WRONLY) | os.O_RDWR, 0o644, dir_fd=self.folder.fd)
                except FileExistsError:
                    continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise Planted(f"{path}: the lock file is a symbolic link; refused without following it. "
                                  "Remove it (its owner or the admin: hpcft cache doctor) and run the command "
                                  "again") from None
                raise
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                os.close(self.fd)
                self.fd = -1
                raise Planted(f"{path}: the lock file is not a regular file; refused")

    def __enter__(self) -> "Lock":
        import fcntl
        import time

        path = self.folder.join(self.name)
        self._open(path)
        t0 = time.monotonic()
        waited, named = 0.0, None
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._record()
                return self
            except BlockingIOError:
                pass
            now = time.monotonic() - t0
            if self.timeout is not None and now >= self.timeout:
                holder = self.holder()
                os.close(self.fd)
                self.fd = -1
                raise StageError(f"{path}: held by {holder} for more than {self.timeout:g} s; gave up. Ask "
                                 f"{holder.user}, or the cache admin, to end that process if it hangs, or raise "
                                 "locks.wait_s in the hpcft config to wait longer")
            if self.on_wait is not None and now - waited >= (2 if waited == 0 else 30):
                waited, holder = now, self.holder()
                self.on_wait(now, path if holder == named else f"{path}, held by {holder}")
                named = holder
            time.sleep(0.1)

    @staticmethod
    def flock_holders(st: os.stat_result, table: Optional[str] = None) -> list[int]:
        """Who holds a lock on the file of ``st`` (pids; waiters ``->`` are not) by ``/proc/locks``."""
        if table is None:
            try:
                with open("/proc/locks", encoding="ascii", errors="replace") as fh:
                    table = fh.read()
            except OSError:
                return []
        want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        rows = [line.split() for line in table.splitlines()]
        return [int(f[4]) for f in rows if len(f) >= 6 and f[1] != "->" and f[5] == want and f[4].isdigit()
                and int(f[4]) > 0]

    def holder(self) -> "Lock.Holder":
        """Who holds the lock now (see the class docstring)."""
        st = os.fstat(self.fd)
        for pid in self.flock_holders(st):
            try:
                return self.Holder(owner_name(os.stat(f"/proc/{pid}").st_uid), pid)
            except OSError:  # gone meanwhile, or /proc hides other users' processes
                return self.Holder(owner_name(st.st_uid), pid)
        try:
            found = self.RECORD.fullmatch(os.pread(self.fd, 512, 0).decode("utf-8", "replace"))
        except OSError:
            found = None
        if found and found.group(1) == owner_name(st.st_uid) and found.group(3) != socket.gethostname():
            return self.Holder(found.group(1), int(found.group(2)), found.group(3))
        return self.Holder(owner_name(st.st_uid))

    def _record(self) -> None:
        """Write who holds it into a lock file we own, for waiters on other hosts."""
        me = os.geteuid()
        if os.fstat(self.fd).st_uid != me:
            return
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"user={owner_name(me)} pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
            self.recorded = True
        except OSError:  # opened read-only after all (a read-only mount): waiters name the file's owner
            self.recorded = False

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            try:
                if self.recorded:  # a record left behind would name us while somebody else holds it
                    os.ftruncate(self.fd, 0)
            finally:
                self.recorded = False
                os.close(self.fd)  # closing releases the flock
                self.fd = -1
