"""Real Unix users for tests of what one cluster user can do to another through a shared folder.

Made with ``groupadd``/``useradd`` (needs root), idempotently: a group, users that carry it as a
supplementary group, homes under :data:`USERS_ROOT` (0700, owned by each user) that
:func:`fill_decoys` fills with files an attacker would like to reach. :func:`as_user` builds
the ``runuser`` command line that runs a program as one of them with exactly the environment
given (nothing of the caller's leaks through).

The interpreter must be executable by the other users. A venv made from a Python under
``/root`` (pyenv's default) is not: ``/root`` is 0700. :func:`user_python` then makes a small
side venv from a system Python of the same minor version that reads the test venv's
site-packages, and says why when it cannot.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

USERS_ROOT = Path("/tmp/hpcft-users")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """Real users cannot be used here; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def check_tools() -> None:
    if os.geteuid() != 0:
        raise Unavailable("not running as root: cannot create users")
    missing = [t for t in ("useradd", "groupadd", "usermod", "runuser") if shutil.which(t, path=BASE_PATH) is None]
    if missing:
        raise Unavailable(f"missing {', '.join(missing)} (Debian: apt-get install passwd util-linux)")


def ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    proc = _run(["groupadd", name])
    try:  # a concurrent run may have made it a moment ago
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise Unavailable(f"groupadd {name} failed: {proc.stderr.strip()}") from None


def ensure_user(name: str, group: str) -> User:
    """The user ``name`` (created if missing) with ``group`` as a supplementary group and a
    0700 home at USERS_ROOT/name."""
    home = USERS_ROOT / name
    try:
        pwd.getpwnam(name)
    except KeyError:
        proc = _run(["useradd", "--no-create-home", "--home-dir", str(home), "--user-group",
                     "--groups", group, "--shell", "/usr/sbin/nologin", name])
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise Unavailable(f"useradd {name} failed: {proc.stderr.strip()}") from None
    if name not in grp.getgrnam(group).gr_mem:
        proc = _run(["usermod", "--append", "--groups", group, name])
        if proc.returncode != 0:
            raise Unavailable(f"usermod -aG {group} {name} failed: {proc.stderr.strip()}")
    pw = pwd.getpwnam(name)
    root_dir(USERS_ROOT)
    home.mkdir(exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    os.chmod(home, 0o700)
    return User(name, pw.pw_uid, pw.pw_gid, home)


def root_dir(path: Path) -> None:
    """A root-owned 0755 folder (refuses one somebody else made: /tmp is shared)."""
    path.mkdir(mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise Unavailable(f"{path} exists and is not a folder owned by root; remove it")
    os.chmod(path, 0o755)


DECOYS = {
    ".ssh/authorized_keys": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDecoyDecoyDecoyDecoyDecoyDecoyDecoyDeco {name}@login\n",
    "notes.txt": "{name}'s notes: nothing here may change\n",
    "projects/data.txt": "{name}'s project data\n",
    "projects/run/config.json": '{{"owner": "{name}"}}\n',
}


def fill_decoys(user: User) -> None:
    """Empty the user's home and put the decoy files back, owned by the user."""
    home = user.home
    os.chmod(home, 0o700)
    for entry in list(home.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for rel, text in DECOYS.items():
        path = home / rel
        for d in reversed(path.relative_to(home).parents[:-1]):
            (home / d).mkdir(exist_ok=True)
            os.chown(home / d, user.uid, user.gid)
            os.chmod(home / d, 0o700)
        path.write_text(text.format(name=user.name))
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o600 if ".ssh" in rel else 0o644)


def as_user(user: User, argv: list[str], env: dict[str, str]) -> list[str]:
    """``runuser`` command line: ``argv`` as ``user`` with exactly ``env`` (plus PATH, USER, LOGNAME)."""
    full = {"PATH": BASE_PATH, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8", **env}
    return ["runuser", "-u", user.name, "--", "env", "-i", *(f"{k}={v}" for k, v in full.items()), *argv]


def _probe(user: User, python: str, repo: Path) -> tuple[bool, str]:
    code = "import hpcft, pydantic, filelock, yaml; print(hpcft.__file__)"
    proc = subprocess.run(as_user(user, [python, "-c", code], {"HOME": str(user.home), "PYTHONPATH": str(repo)}),
                          capture_output=True, text=True, cwd="/")
    ok = proc.returncode == 0 and proc.stdout.strip().startswith(str(repo))
    return ok, (proc.stdout + proc.stderr).strip()[-600:]


def _blocked_by(path: Path) -> str | None:
    """The first folder on the way to ``path`` that others cannot enter, if any."""
    for parent in reversed(Path(path).parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return f"{parent} is mode {stat.S_IMODE(os.stat(parent).st_mode):o}"
    return None


def _readable_by_all(top: Path) -> None:
    """Folders 0755, files 0644 below ``top`` (a tree made by root for the other users)."""
    for d, _dirs, names in os.walk(top):
        os.chmod(d, 0o755)
        for n in names:
            os.chmod(os.path.join(d, n), 0o644)


def _readable_copy(repo: Path) -> Path:
    """A copy of ``repo/hpcft`` under USERS_ROOT that every user can read (CI may clone under /root)."""
    digest = hashlib.sha256()
    files = sorted(p for p in (repo / "hpcft").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        digest.update(p.relative_to(repo).as_posix().encode() + b"\0" + p.read_bytes())
    dst = USERS_ROOT / f"src-{digest.hexdigest()[:12]}"
    if not dst.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".src-", dir=USERS_ROOT))
        shutil.copytree(repo / "hpcft", tmp / "src" / "hpcft", ignore=shutil.ignore_patterns("__pycache__"))
        _readable_by_all(tmp)
        try:
            os.rename(tmp / "src", dst)
        except OSError:  # a concurrent run made it first
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _readable_site(ver: str) -> Path:
    """The login side's few dependencies, pip-installed (as root) where every user can read them."""
    site = USERS_ROOT / f"site-{ver}"
    if not (site / ".done").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".site-", dir=USERS_ROOT))
        proc = _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                     str(tmp / "site"), "pydantic>=2", "pyyaml", "filelock", "jinja2"])
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Unavailable(f"pip install --target for other users failed: {proc.stderr.strip()[-400:]}")
        (tmp / "site" / ".done").write_text("")
        _readable_by_all(tmp)
        try:
            os.rename(tmp / "site", site)
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return site


def user_python(user: User, repo: Path) -> tuple[str, Path]:
    """An interpreter ``user`` can run, and the folder to put on its PYTHONPATH for hpcft.

    The checkout and this interpreter when ``user`` can use them; else a side venv
    (USERS_ROOT/venv-py3.X-HASH) made from a world-executable python3.X whose ``.pth`` adds this
    venv's site-packages (or, when that is unreadable too, a pip-installed copy of the login
    side's dependencies), with a copy of ``hpcft/`` when the checkout is unreadable."""
    repo = Path(repo).resolve()
    if _blocked_by(repo / "hpcft" / "__init__.py"):
        repo = _readable_copy(repo)
    ok, out = _probe(user, sys.executable, repo)
    if ok:
        return sys.executable, repo
    own = f"{sys.executable} (-> {os.path.realpath(sys.executable)}) cannot be run by {user.name}: " + \
        (_blocked_by(Path(os.path.realpath(sys.executable))) or out)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = sysconfig.get_paths()["purelib"]
    if _blocked_by(Path(site) / "x"):
        site = str(_readable_site(ver))
    cands = [c for c in (f"/usr/bin/{ver}", f"/usr/local/bin/{ver}", shutil.which(ver, path=BASE_PATH)) if c]
    for cand in dict.fromkeys(cands):
        if not os.access(cand, os.X_OK) or _blocked_by(Path(os.path.realpath(cand))):
            continue
        side = USERS_ROOT / f"venv-{ver}-{hashlib.sha256(site.encode()).hexdigest()[:8]}"
        if not side.is_dir():
            root_dir(USERS_ROOT)
            tmp = Path(tempfile.mkdtemp(prefix=".venv-", dir=USERS_ROOT))
            made = _run([cand, "-m", "venv", "--without-pip", str(tmp / "venv")])
            if made.returncode != 0:
                shutil.rmtree(tmp)
                continue
            pth = tmp / "venv" / "lib" / ver / "site-packages" / "_hpcft_test_venv.pth"
            pth.write_text(f"import site; site.addsitedir({site!r})\n")
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp / "venv", side)
            except OSError:  # a concurrent run made it first
                pass
            shutil.rmtree(tmp, ignore_errors=True)
        python = str(side / "bin" / "python")
        ok, out2 = _probe(user, python, repo)
        if ok:
            return python, repo
        own += f"; side venv {side} from {cand} failed: {out2}"
    raise Unavailable(own + f"; no usable world-executable {ver} found ({', '.join(cands) or 'none'})")
