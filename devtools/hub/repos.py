"""Repo folders as the hub sees them: files, git/LFS ids, commit shas, revisions."""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

# Files a checkout has that are not part of the repo.
IGNORED_PARTS = {".git", "__pycache__", ".cache"}


@dataclass(frozen=True)
class FileEntry:
    path: str  # repo-relative, "/"-separated
    size: int
    sha256: str
    git_oid: str  # sha1 of the git blob (of the LFS pointer for LFS files)
    lfs: bool
    pointer_size: int = 0

    @property
    def etag(self) -> str:
        # huggingface.co: ETag of a regular file is its git blob id; of an LFS file
        # its sha256 -- which is why LFS blobs in the HF cache are named by sha256.
        return self.sha256 if self.lfs else self.git_oid


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _gitattributes_lfs_patterns(folder: Path) -> list[str]:
    ga = folder / ".gitattributes"
    if not ga.is_file():
        return []
    pats = []
    for line in ga.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and "filter=lfs" in parts[1:]:
            pats.append(parts[0])
    return pats


@dataclass
class Snapshot:
    """One commit: the content of a folder at the time it was added."""

    folder: Path
    files: dict[str, FileEntry]
    sha: str
    dirs: set[str] = field(default_factory=set)

    @classmethod
    def scan(cls, folder: Path, lfs_threshold: int) -> "Snapshot":
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"repo folder {folder} does not exist")
        patterns = _gitattributes_lfs_patterns(folder)
        files: dict[str, FileEntry] = {}
        dirs: set[str] = set()
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if any(part in IGNORED_PARTS for part in rel.parts) or not p.is_file():
                continue
            data = p.read_bytes()
            path = rel.as_posix()
            sha256 = hashlib.sha256(data).hexdigest()
            lfs = len(data) >= lfs_threshold or any(
                fnmatch.fnmatch(rel.name, pat) or fnmatch.fnmatch(path, pat) for pat in patterns)
            blob = _lfs_pointer(sha256, len(data)) if lfs else data
            oid = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
            files[path] = FileEntry(path, len(data), sha256, oid, lfs, len(blob) if lfs else 0)
            for i in range(1, len(rel.parts)):
                dirs.add("/".join(rel.parts[:i]))
        # A stable "commit sha": same content -> same sha, in any run.
        h = hashlib.sha1()
        for path, e in files.items():
            h.update(f"{path}\0{e.git_oid}\n".encode())
        return cls(folder, files, h.hexdigest(), dirs)

    def read(self, path: str) -> bytes:
        return (self.folder / path).read_bytes()

    def dir_oid(self, d: str) -> str:
        h = hashlib.sha1(d.encode())
        for p, e in self.files.items():
            if p.startswith(d + "/"):
                h.update(e.git_oid.encode())
        return h.hexdigest()

    def entries(self, root: str = "", recursive: bool = True) -> list[tuple[str, str]]:
        """[(type, path)] under ``root`` (type "file" or "directory"), dirs first per level."""
        prefix = root.strip("/") + "/" if root.strip("/") else ""
        out = []
        for d in sorted(self.dirs):
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                out.append(("directory", d))
        for p in self.files:
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                out.append(("file", p))
        return out


class Repo:
    """A served repo: kind, id, and its revisions (name or sha -> Snapshot)."""

    def __init__(self, kind: str, repo_id: str, folder: Path, revisions: dict, *, lfs_threshold: int):
        self.kind, self.repo_id = kind, repo_id
        self.default = Snapshot.scan(folder, lfs_threshold)
        # HF calls the default branch "main", ModelScope "master": answer to both.
        self.branches: dict[str, Snapshot] = {"main": self.default, "master": self.default}
        self.tags: dict[str, Snapshot] = {}
        for name, f in revisions.items():
            self.tags[name] = self.default if f is None else Snapshot.scan(Path(f), lfs_threshold)

    def snapshot(self, rev: str | None) -> Snapshot | None:
        rev = rev or "main"
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        for snap in [*self.branches.values(), *self.tags.values()]:
            if rev == snap.sha:
                return snap
        return None

    @property
    def files(self) -> dict[str, FileEntry]:
        return self.default.files
