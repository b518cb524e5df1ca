"""Reading a benchmark's archive (tar or zip) without extracting it: every member checked first.

Refused, for the whole archive: a member with an absolute path or a ``..`` step, a link (symbolic
or hard), a device or other special file, more than :data:`MAX_MEMBERS` entries; and a member read
that is over :data:`MAX_MEMBER` (by its header before reading, and again while read). Nothing is
written to disk: members are read into memory, one at a time, by name (eval_convert.py converts them).
"""

from __future__ import annotations

import csv
import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Optional

MAX_MEMBER = 64 << 20                      # one CSV/JSONL read (MMLU's largest, professional_law: 2 MB)
MAX_MEMBERS = 20_000                       # entries in one archive


def cap_text() -> str:
    return f"{MAX_MEMBER >> 20} MiB" if MAX_MEMBER >= 1 << 20 else f"{MAX_MEMBER:,} bytes"


class Bad(Exception):
    """One line about the source data (the caller prefixes the repo and file)."""


def safe_member(name: str) -> None:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise Bad(f"member {name!r}: an absolute path; refused (an archive's members stay inside its folder)")
    if any(p == ".." for p in re.split(r"[/\\]", name)):
        raise Bad(f"member {name!r}: a path leading out of the archive's folder; refused")
    if "\0" in name:
        raise Bad(f"member {name!r}: a NUL byte in the name; refused")


class Archive:
    """The regular files of a tar or zip, every member checked before any is read."""

    def __init__(self, path: Path, label: str):
        self.label, self.sizes = label, {}
        self._tar: Optional[tarfile.TarFile] = None
        self._zip: Optional[zipfile.ZipFile] = None
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
                members = [(i.filename, i.file_size, self._zip_kind(i)) for i in self._zip.infolist()]
            else:
                self._tar = tarfile.open(path, mode="r:*")
                members = []
                for m in self._tar:
                    kind = "file" if m.isfile() else "dir" if m.isdir() else \
                        "link" if (m.issym() or m.islnk()) else "special"
                    members.append((m.name, m.size, kind))
                    if len(members) > MAX_MEMBERS:
                        break
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise Bad(f"not a readable tar or zip archive ({exc})") from None
        if len(members) > MAX_MEMBERS:
            raise Bad(f"more than {MAX_MEMBERS} members; refused")
        for name, size, kind in members:
            safe_member(name)
            if kind == "link":
                raise Bad(f"member {name!r}: a link; refused (only regular files are read)")
            if kind == "special":
                raise Bad(f"member {name!r}: a device, fifo or other special file; refused")
            if kind == "file":
                self.sizes[name] = size

    @staticmethod
    def _zip_kind(info: zipfile.ZipInfo) -> str:
        fmt = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records permissions only (or nothing)
        if fmt == stat.S_IFLNK:
            return "link"
        if info.is_dir() or fmt == stat.S_IFDIR:
            return "dir"
        return "file" if fmt in (0, stat.S_IFREG) else "special"

    def read(self, name: str) -> bytes:
        # the cap holds for what is read: MMLU's data.tar also carries data/auxiliary_train/ (most of its
        # size), which no benchmark reads
        if self.sizes.get(name, 0) > MAX_MEMBER:
            raise Bad(f"member {name!r}: {self.sizes[name]:,} bytes, over the {cap_text()} a member read may "
                      "have; refused")
        try:
            if self._zip is not None:
                with self._zip.open(name) as fh:
                    data = fh.read(MAX_MEMBER + 1)
            else:
                assert self._tar is not None
                fh = self._tar.extractfile(name)
                if fh is None:
                    raise Bad(f"member {name!r}: not a regular file; refused")
                data = fh.read(MAX_MEMBER + 1)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
            raise Bad(f"member {name!r}: cannot be read ({exc})") from None
        if len(data) > MAX_MEMBER:
            raise Bad(f"member {name!r}: more than {cap_text()} when read; refused")
        return data

    def close(self) -> None:
        for a in (self._zip, self._tar):
            if a is not None:
                a.close()


def member_index(names, pattern: str, label: str) -> dict[tuple[str, str], str]:
    """{(folder, subject): member} for members matching ``pattern`` (groups folder, subject[, folder])."""
    out: dict[tuple[str, str], str] = {}
    rx = re.compile(pattern)
    for name in names:
        if name.startswith("__MACOSX/"):
            continue
        m = rx.search(name)
        if m is None or (m.lastindex or 0) >= 3 and m.group(1) != m.group(3):
            continue
        key = (m.group(1), m.group(2))
        if key in out:
            raise Bad(f"both {out[key]!r} and {name!r} hold {key[0]}/{key[1]}; refused")
        out[key] = name
    return out


def text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Bad(f"{where}: not UTF-8 text (byte {exc.start}); refused") from None


def csv_rows(data: bytes, where: str) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(text(data, where), newline="")))
    except csv.Error as exc:
        raise Bad(f"{where}: not a CSV file ({exc})") from None
