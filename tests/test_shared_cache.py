"""Two real Unix users share one hpcft cache: attacker A cannot make victim B's hpcft touch
anything outside it.

Users ``hpcfta`` (A) and ``hpcftb`` (B) are both in group ``hpcftshare``; the cache is a folder
an admin made (root, group hpcftshare, mode 3775) named by the cluster config (``cache_dir``,
``cache_group``). A plants links, forged manifests and replacement files as A (``runuser``);
then B runs hpcft as B. After every attack: B's and A's homes (decoys: ``.ssh/authorized_keys``,
``notes.txt``, ``projects/``) and everything under /tmp/hpcft-shared but the cache are
unchanged, and B's command either did its job (staged files inside the cache, sha256 as the hub
serves them) or failed with a clear error (non-zero exit, no traceback).

Needs root and useradd/groupadd/runuser (devtools/users.py): fails under CI=true without them,
skips otherwise. The loopback hub runs in this process; the users reach it on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import users
from devtools.fssnap import diff, snapshot
from devtools.hub.pytest_fixtures import hub, hub_fixtures, hub_server  # noqa: F401
from hpcft.core.offline import offline_env

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
GROUP = "hpcftshare"
SHARED_ROOT = Path("/tmp/hpcft-shared")
BERT = "google-bert/bert-base-uncased"
GLUE = "nyu-mll/glue"
METRIC = "evaluate-metric/glue"
# what a correct stage puts in the cache, checked byte for byte against the hub's files
EXPECT = {
    ("model", BERT): ("model", {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                "vocab.txt", "special_tokens_map.json"}),
    ("dataset", GLUE): ("dataset", {"README.md", "mrpc/train-00000-of-00001.parquet",
                                    "mrpc/validation-00000-of-00001.parquet", "mrpc/test-00000-of-00001.parquet"}),
    ("metric", METRIC): ("space", {"glue.py", "README.md", "requirements.txt"}),
}
BERT_REPO = "hf/hub/models--google-bert--bert-base-uncased"
GLUE_MANIFEST = "manifests/dataset/nyu-mll--glue@mrpc.json"
BERT_LOCK = "locks/model--google-bert--bert-base-uncased.lock"


# ---------------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class People:
    a: users.User
    b: users.User
    gid: int
    python: str  # an interpreter both users can run
    src: Path    # what it imports hpcft from: ROOT, or a readable copy (CI may clone under /root)


# the People of this process while it holds the users' lock: tests/test_shared_cache_r2.py imports
# these fixtures, which pytest then keeps per module; a second flock from this process would wait forever
_HELD: list = []


@pytest.fixture(scope="session")
def people():
    """Group hpcftshare with users hpcfta and hpcftb (idempotent). Held under a lock, so two
    pytest runs on one machine take turns with the shared homes."""
    try:
        users.check_tools()
        users.root_dir(users.USERS_ROOT)
    except users.Unavailable as exc:
        if IN_CI:
            pytest.fail(f"real users are required under CI=true: {exc}")
        pytest.skip(f"no real users: {exc}")
    if _HELD:  # this process holds the lock already (another module that uses these fixtures)
        yield _HELD[0]
        return
    with open(users.USERS_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # before anything touches the homes
        try:
            gid = users.ensure_group(GROUP)
            a, b = users.ensure_user("hpcfta", GROUP), users.ensure_user("hpcftb", GROUP)
            python, src = users.user_python(b, ROOT)
        except users.Unavailable as exc:
            if IN_CI:
                pytest.fail(f"real users are required under CI=true: {exc}")
            pytest.skip(f"no real users: {exc}")
        _HELD.append(People(a, b, gid, python, src))
        try:
            yield _HELD[0]
        finally:
            _HELD.clear()


@dataclass
class Proc:
    who: str
    argv: list[str]
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return (f"[{self.who}] {' '.join(self.argv)} -> exit {self.rc}\n--- stdout\n{self.out[-3000:]}"
                f"\n--- stderr\n{self.err[-6000:]}")


class Started:
    """A command as a user that has reported its pid and waits for :meth:`go`."""

    def __init__(self, who: str, argv: list[str], popen: subprocess.Popen):
        self.who, self.argv, self.popen = who, argv, popen
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = os.read(popen.stdout.fileno(), 1)
            if not chunk:
                raise AssertionError(f"{who}: {argv} died before starting: {popen.stderr.read().decode()}")
            buf += chunk
        self.pid = int(buf)

    def go(self) -> None:
        self.popen.stdin.write(b"go\n")
        self.popen.stdin.close()
        self.popen.stdin = None

    def wait(self, timeout: float = 120) -> Proc:
        out, err = self.popen.communicate(timeout=timeout)
        proc = Proc(self.who, self.argv, self.popen.returncode, out.decode(errors="replace"),
                    err.decode(errors="replace"))
        print(proc)
        return proc


class Shared:
    """One fresh shared cache, its cluster config, and running things as A or B."""

    def __init__(self, people: People, hub_srv, cache: Path, config: Path):
        self.people, self.hub, self.cache, self.config = people, hub_srv, cache, config
        self.a, self.b = people.a, people.b
        self.log: list[Proc] = []
        self.dirmode = 0o3775  # folders A makes (see LAYOUTS)

    def prepare(self, layout: str) -> None:
        """Who made the cache's folders before the attack: see LAYOUTS."""
        if layout == "b-made":
            proc = self.hpcft(self.b, "stage", "--metric", "glue", "--json")
            assert proc.rc == 0, str(proc)
        self.dirmode = 0o2775 if layout == "a-made-2775" else 0o3775

    def env(self, user: users.User, **extra: str) -> dict[str, str]:
        home = user.home
        return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "HPCFT_HOME": str(home / "hpcft"),
                "HPCFT_CONFIG": str(self.config), **self.hub.env(), "HPCFT_RETRY_BACKOFF_S": "0.05",
                "PYTHONPATH": str(self.people.src), "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def _who(self, user: users.User) -> str:
        return "A" if user == self.a else "B"

    def run(self, user: users.User, argv: list[str], env: dict[str, str], timeout: float = 120) -> Proc:
        cmd = users.as_user(user, argv, env)
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=user.home, timeout=timeout)
        proc = Proc(self._who(user), argv, p.returncode, p.stdout, p.stderr)
        print(proc)
        self.log.append(proc)
        return proc

    def hpcft(self, user: users.User, *args: str) -> Proc:
        return self.run(user, [self.people.python, "-m", "hpcft.cli.main", *args], self.env(user))

    def start(self, user: users.User, *args: str) -> Started:
        argv = [self.people.python, "-m", "hpcft.cli.main", *args]
        cmd = users.as_user(user, ["sh", "-c", 'echo $$; read go; exec "$@"', "sh", *argv], self.env(user))
        popen = subprocess.Popen(cmd, cwd=user.home, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        return Started(self._who(user), argv, popen)

    def as_a(self, code: str, **values) -> Proc:
        """Run ``code`` as the attacker (PRELUDE names C, AHOME, BHOME, mk); it must succeed."""
        env = {"HOME": str(self.a.home), "CACHE": str(self.cache), "AHOME": str(self.a.home),
               "BHOME": str(self.b.home), "PYTHONDONTWRITEBYTECODE": "1", "DIRMODE": oct(self.dirmode),
               **{k.upper(): str(v) for k, v in values.items()}}
        proc = self.run(self.a, [self.people.python, "-c", PRELUDE + code], env)
        assert proc.rc == 0, f"the attacker's own step failed:\n{proc}"
        return proc

    # ---- checks
    def outside(self) -> dict[str, dict]:
        """Both homes (but HPCFT_HOME, hpcft's own state there) and /tmp/hpcft-shared but the cache."""
        return {"B's home": snapshot(self.b.home, exclude=[self.b.home / "hpcft"]),
                "A's home": snapshot(self.a.home, exclude=[self.a.home / "hpcft"]),
                "/tmp/hpcft-shared (the cache excluded)": snapshot(SHARED_ROOT, exclude=[self.cache])}

    def assert_untouched(self, before: dict[str, dict]) -> None:
        after = self.outside()
        changed = {k: diff(before[k], after[k]) for k in before}
        changed = {k: v for k, v in changed.items() if v}
        if changed:
            text = "\n".join(f"{k}:\n  " + "\n  ".join(v[:20]) for k, v in changed.items())
            raise AssertionError(f"outside the cache changed:\n{text}\n\ncommands:\n" +
                                 "\n\n".join(str(p) for p in self.log))

    def assert_staged_or_refused(self, proc: Proc, want: set[tuple[str, str]]) -> str:
        """B's ``hpcft stage ... --json`` either staged ``want`` correctly inside the cache or
        failed with a clear error. Returns "staged" or "refused"."""
        assert "Traceback" not in proc.err, f"a traceback instead of a clear error:\n{proc}"
        if proc.rc != 0:
            last = proc.err.strip().splitlines()[-1:] or [""]
            assert "error" in last[0].lower(), f"exit {proc.rc} without an error line:\n{proc}"
            return "refused"
        assets = {(a["kind"], a["repo_id"]): a for a in json.loads(proc.out)["assets"]}
        assert want <= assets.keys(), f"missing {want - assets.keys()}:\n{proc}"
        for key in want:
            self.assert_correct(Path(assets[key]["path"]), *key, proc=proc)
        self.assert_hub_names_inside(proc)
        return "staged"

    def assert_hub_names_inside(self, proc: Proc | None = None) -> None:
        """What B's offline job resolves a name through (hf/hub/<kind>s--NAME, its snapshots/
        and each snapshot) leads to a place inside the cache."""
        hub_dir = self.cache / "hf" / "hub"
        real = os.path.realpath(self.cache)
        for repo in sorted(hub_dir.iterdir()) if hub_dir.is_dir() else []:
            snaps = repo / "snapshots"
            for p in [repo, snaps, *(sorted(snaps.iterdir()) if snaps.is_dir() else [])]:
                where = os.path.realpath(p)
                assert where == real or where.startswith(real + os.sep), \
                    f"{p} leads to {where}, outside the cache: B's job would load it\n{proc or ''}"

    def assert_correct(self, folder: Path, kind: str, repo_id: str, proc: Proc | None = None) -> None:
        """``folder`` lies inside the cache with no link on the way, and holds the hub's bytes."""
        hub_kind, files = EXPECT[(kind, repo_id)]
        served = self.hub.repos[(hub_kind, repo_id)].files
        assert os.path.realpath(folder) == str(folder) and folder.is_relative_to(self.cache), \
            f"{kind} {repo_id} staged at {folder}, not inside {self.cache} without links\n{proc or ''}"
        for f in sorted(files):
            p = folder / f
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode), f"{p} is not a regular file\n{proc or ''}"
            assert sha256(p) == served[f].sha256, f"{p}: not the hub's bytes\n{proc or ''}"


PRELUDE = """\
import errno, json, os, sys
from pathlib import Path
C, AHOME, BHOME = Path(os.environ["CACHE"]), Path(os.environ["AHOME"]), Path(os.environ["BHOME"])
def mk(p):
    # mkdir -p as hpcft run by A makes them: group-writable, setgid (and sticky since hpcft 0.2)
    p, todo = Path(p), []
    while not os.path.lexists(p):
        todo.append(p)
        p = p.parent
    for d in reversed(todo):
        d.mkdir()
        os.chmod(d, int(os.environ["DIRMODE"], 8))
"""


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture
def shared(people, hub):  # noqa: F811
    """A fresh cache (root:hpcftshare 3775, as an admin makes it), its cluster config, and
    freshly filled decoy homes."""
    users.root_dir(SHARED_ROOT)
    for u in (people.a, people.b):
        users.fill_decoys(u)
    token = secrets.token_hex(4)
    cache = SHARED_ROOT / f"cache-{token}"
    cache.mkdir()
    os.chown(cache, 0, people.gid)
    os.chmod(cache, 0o3775)
    config = SHARED_ROOT / f"config-{token}.yaml"
    config.write_text(f"cache_dir: {cache}\ncache_group: {GROUP}\n")
    os.chmod(config, 0o644)
    yield Shared(people, hub, cache, config)
    shutil.rmtree(cache)  # rmtree never follows the links A planted
    config.unlink()


def hub_sha(hub_srv, kind: str, repo_id: str) -> str:  # noqa: F811
    """The commit the hub serves, asked as a client asks (the revision API)."""
    with urllib.request.urlopen(f"{hub_srv.url}/api/{kind}s/{repo_id}/revision/main", timeout=10) as resp:
        return json.load(resp)["sha"]


def test_other_users_can_run_hpcft(shared):
    """The premise: both users run the CLI, see the cluster config and reach the hub."""
    for user in (shared.a, shared.b):
        proc = shared.hpcft(user, "--help")
        assert proc.rc == 0 and "stage" in proc.out, str(proc)
    proc = shared.hpcft(shared.b, "cache", "ls", "--json")
    assert proc.rc == 0 and json.loads(proc.out)["cache"] == str(shared.cache), str(proc)


# Who made the cache's folders (tmp/, locks/, manifests/..., hf/hub/...) before A's attack:
# A did, as hpcft made them before (2775: group-writable, not sticky) or makes them now (3775,
# sticky); or B did (B staged the glue metric first) and A adds only what is missing.
LAYOUTS = ["a-made-2775", "a-made-3775", "b-made"]


# ---------------------------------------------------------------------------- 1. planted links
# What A plants before B's `hpcft stage bert-base-uncased glue/mrpc`; PID is B's process id
# (B reports it and waits), TMP the temp folder name hpcft used to use for bert
# (.../model--ORG--NAME--hf-<first 12 hex of the commit>).
PLANTS = {
    "tmp-files-to-home": "mk(C / 'tmp' / TMP)\nos.symlink(BHOME, C / 'tmp' / TMP / 'files')",
    "part-to-authorized-keys": "mk(C / 'tmp' / TMP / 'files')\n"
                               "os.symlink(BHOME / '.ssh/authorized_keys', C / 'tmp' / TMP / 'files/config.json.part')",
    "probe-to-notes": "mk(C / 'tmp')\nos.symlink(BHOME / 'notes.txt', C / 'tmp' / f'.probe-{PID}')",
    "ref-tmp-to-authorized-keys": f"mk(C / '{BERT_REPO}/refs')\n"
                                  f"os.symlink(BHOME / '.ssh/authorized_keys', C / '{BERT_REPO}/refs' / f'.main.{{PID}}.tmp')",
    "repo-to-home": f"mk(C / 'hf/hub')\nos.symlink(BHOME, C / '{BERT_REPO}')",
    "snapshots-to-home": f"mk(C / '{BERT_REPO}')\nos.symlink(BHOME, C / '{BERT_REPO}/snapshots')",
    # the legacy name B's job loads offline (from_pretrained("bert-base-uncased")) -> a repo A wrote
    "alias-to-a-repo": "os.chmod(AHOME, 0o755)\nevil = AHOME / 'evilrepo'\n"
                       "(evil / 'snapshots' / SHA).mkdir(parents=True)\n(evil / 'refs').mkdir()\n"
                       "(evil / 'refs/main').write_text(SHA)\n"
                       "(evil / 'snapshots' / SHA / 'config.json').write_text('{\"model_type\": \"bert\"}')\n"
                       "for p in evil.rglob('*'):\n    os.chmod(p, 0o755 if p.is_dir() else 0o644)\n"
                       "os.chmod(evil, 0o755)\nmk(C / 'hf/hub')\nos.symlink(evil, C / 'hf/hub/models--bert-base-uncased')",
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_links_do_not_lead_stage_outside(shared, plant, layout):
    shared.prepare(layout)
    sha = hub_sha(shared.hub, "model", BERT)
    b = shared.start(shared.b, "stage", "bert-base-uncased", "glue/mrpc", "--json")
    try:
        shared.as_a(f"PID, TMP, SHA = int(os.environ['PID']), os.environ['TMP'], os.environ['SHA']\n{PLANTS[plant]}\n",
                    pid=b.pid, sha=sha, tmp=f"model--google-bert--bert-base-uncased--hf-{sha[:12]}")
        before = shared.outside()
    finally:
        b.go()
    proc = b.wait()
    shared.log.append(proc)
    shared.assert_untouched(before)
    shared.assert_staged_or_refused(proc, {("model", BERT), ("dataset", GLUE), ("metric", METRIC)})


# ---------------------------------------------------------------------------- 2. forged manifests
FORGE = """\
target = Path(os.environ["TARGET"])
if target.is_relative_to(AHOME):  # A's own fake dataset, readable by B
    os.chmod(AHOME, 0o755)
    (target / "mrpc").mkdir(parents=True)
    (target / "README.md").write_text("---\\nconfigs:\\n- config_name: mrpc\\n  data_files:\\n"
                                      "  - split: train\\n    path: mrpc/train-*\\n---\\n")
    (target / "mrpc/train-00000-of-00001.parquet").write_bytes(b"PAR1 not what B wanted PAR1")
    for p in [target, target / "mrpc"]:
        os.chmod(p, 0o755)
files = []  # what the folder holds, hashed as hpcft would (where A can read it)
for p in sorted(target.rglob("*")) if os.access(target, os.R_OK) else []:
    if p.is_file():
        import hashlib
        files.append({"path": p.relative_to(target).as_posix(), "size": p.stat().st_size,
                      "sha256": hashlib.sha256(p.read_bytes()).hexdigest()})
if not files:  # B's folder: A cannot look inside, and need not
    files = [{"path": "data.txt", "size": 1, "sha256": "0" * 64}]
manifest = C / os.environ["MANIFEST"]
mk(manifest.parent)
manifest.write_text(json.dumps({
    "kind": "dataset", "repo_id": "nyu-mll/glue", "config": "mrpc", "aliases": ["glue", "glue/mrpc"],
    "source": "hf", "endpoint": "http://127.0.0.1:1", "revision": "main", "sha": "f" * 40,
    "path": str(target), "files": files, "size": sum(f["size"] for f in files),
    "staged_at": "2025-01-01T00:00:00+00:00", "hpcft_version": "0.1.0"}))
os.chmod(manifest, 0o644)  # read-only to the group, like a real one
"""

SHIM_CHECK = """\
import json, sys
from hpcft.offline_shim.sitecustomize import staged_dataset
auto = sys.modules.get("sitecustomize")
print(json.dumps({"imported": staged_dataset("glue", "mrpc"),
                  "startup": auto.staged_dataset("glue", "mrpc") if hasattr(auto, "staged_dataset") else "no shim",
                  "shim_file": getattr(auto, "__file__", None)}))
"""


# where A's forged glue/mrpc manifest points: a fake dataset in A's home, a folder in B's home,
# or B's staged bert inside the cache (B's own files, but not what A's manifest may claim)
TARGETS = ["a-fake-dataset", "b-home-folder", "b-staged-in-cache"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("action", ["verify", "rm", "shim", "stage"])
@pytest.mark.parametrize("target", TARGETS)
def test_forged_manifest_is_not_trusted(shared, target, action, layout):
    shared.prepare(layout)
    b = shared.b
    if target == "b-staged-in-cache":
        first = shared.hpcft(b, "stage", "bert-base-uncased", "--json")
        assert first.rc == 0, str(first)
        folder = Path(json.loads(first.out)["assets"][0]["path"])
    else:
        folder = shared.a.home / "evil" if target == "a-fake-dataset" else b.home / "projects"
    shared.as_a(FORGE, target=folder, manifest=GLUE_MANIFEST)
    before = shared.outside()
    if action == "verify":
        proc = shared.hpcft(b, "cache", "verify")
        said = proc.out + proc.err
        assert proc.rc != 0 and "Traceback" not in said, f"verify passed or crashed on a forged manifest:\n{proc}"
        assert str(shared.cache / GLUE_MANIFEST) in said, f"verify did not name the forged manifest:\n{proc}"
    elif action == "rm":
        proc = shared.hpcft(b, "cache", "rm", "glue/mrpc")
        assert proc.rc != 0 and "Traceback" not in proc.err and proc.err.strip(), \
            f"rm went ahead on a manifest B did not write:\n{proc}"
    elif action == "shim":
        src = shared.people.src  # the shim from the copy B can read (the checkout may be under /root)
        env = {**shared.env(b), **offline_env(shared.cache, str(src)),
               "PYTHONPATH": f"{src / 'hpcft' / 'offline_shim'}:{src}"}
        proc = shared.run(b, [shared.people.python, "-c", SHIM_CHECK], env)
        assert proc.rc == 0, str(proc)
        got = json.loads(proc.out.strip().splitlines()[-1])
        assert got["shim_file"] and "offline_shim" in got["shim_file"], f"the shim did not load:\n{proc}"
        assert got["imported"] is None and got["startup"] is None, \
            f"the shim hands B's job a folder A chose:\n{proc}"
    else:
        proc = shared.hpcft(b, "stage", "glue/mrpc", "--json")
        shared.assert_staged_or_refused(proc, {("dataset", GLUE), ("metric", METRIC)})
    shared.assert_untouched(before)
    if target == "b-staged-in-cache":
        shared.assert_correct(folder, "model", BERT, proc)


# ---------------------------------------------------------------------------- 3. replacing B's files
TAMPER = """\
target = Path(os.environ["TARGET"])
spare = C / f".spare-{os.getpid()}"
out = {}
def attempt(op, fn):
    try:
        fn()
        out[op] = "done"
    except OSError as exc:
        out[op] = errno.errorcode.get(exc.errno, str(exc.errno))
def open_write():
    fd = os.open(target, os.O_WRONLY)
    os.write(fd, b"EVIL")
    os.close(fd)
def rename_over():
    spare.write_bytes(b"EVIL")
    os.replace(spare, target)
def unlink_create():
    os.unlink(target)
    target.write_bytes(b"EVIL")
attempt("open-write", open_write)
attempt("rename-over", rename_over)
attempt("unlink-create", unlink_create)
print(json.dumps(out))
"""


@pytest.mark.parametrize("what", ["weights", "manifest", "ref"])
def test_attacker_cannot_replace_staged_files(shared, what):
    b = shared.b
    first = shared.hpcft(b, "stage", "bert-base-uncased", "--json")
    assert first.rc == 0, str(first)
    [asset] = json.loads(first.out)["assets"]
    snap = Path(asset["path"])
    shared.assert_correct(snap, "model", BERT, first)
    manifests = [p for p in (shared.cache / "manifests" / "model").glob("*.json")
                 if json.loads(p.read_text()).get("repo_id") == BERT]
    assert len(manifests) == 1, manifests
    target = {"weights": snap / "model.safetensors", "manifest": manifests[0],
              "ref": snap.parent.parent / "refs" / "main"}[what]
    assert os.lstat(target).st_uid == b.uid
    before = shared.outside()
    tried = json.loads(shared.as_a(TAMPER, target=target).out.strip().splitlines()[-1])
    again = shared.hpcft(b, "stage", "bert-base-uncased", "--json")
    verify = shared.hpcft(b, "cache", "verify")
    shared.assert_untouched(before)
    denied = {op: r for op, r in tried.items() if r in ("EACCES", "EPERM")}
    assert denied == tried, f"A could change B's {what} ({target}): {tried}"
    assert again.rc == 0 and verify.rc == 0, f"{again}\n\n{verify}"
    shared.assert_correct(Path(json.loads(again.out)["assets"][0]["path"]), "model", BERT, again)


# ---------------------------------------------------------------------------- 4. the lock file
@pytest.mark.parametrize("layout", LAYOUTS)
def test_planted_lock_link_is_a_clear_error(shared, layout):
    shared.prepare(layout)
    shared.as_a(f"lock = C / '{BERT_LOCK}'\nmk(lock.parent)\n"
                "lock.unlink(missing_ok=True)\nos.symlink(BHOME / '.ssh/authorized_keys', lock)\n")
    before = shared.outside()
    proc = shared.hpcft(shared.b, "stage", "bert-base-uncased", "--json")
    shared.assert_untouched(before)
    assert proc.rc != 0 and "Traceback" not in proc.err, f"no clean refusal of a planted lock link:\n{proc}"
    lines = [line for line in proc.err.splitlines() if line.strip()]
    lock = shared.cache / BERT_LOCK  # the lock, or its folder when that is what is wrong
    assert lines and (str(lock) in lines[-1] or str(lock.parent) in lines[-1]), \
        f"the error does not name the lock:\n{proc}"


# ---------------------------------------------------------------------------- 5. at the same moment
def test_two_users_stage_the_same_model_at_once(shared):
    size = shared.hub.repos[("model", BERT)].files["model.safetensors"].size
    shared.hub.faults.slow("*/model.safetensors", bytes_per_sec=max(size // 2, 200_000))
    before = shared.outside()
    runs = [shared.start(u, "stage", "bert-base-uncased", "--json") for u in (shared.a, shared.b)]
    t0 = time.monotonic()
    for r in runs:
        r.go()
    procs = [r.wait() for r in runs]
    shared.log.extend(procs)
    shared.assert_untouched(before)
    assert [p.rc for p in procs] == [0, 0], "\n\n".join(map(str, procs))
    for p in procs:
        shared.assert_correct(Path(json.loads(p.out)["assets"][0]["path"]), "model", BERT, p)
    served = shared.hub.repos[("model", BERT)].files
    got = {f: n for (rid, f), n in shared.hub.log.bytes_by_file().items() if rid == BERT}
    want = {f: served[f].size for f in EXPECT[("model", BERT)][1]}
    assert got == want, f"bytes sent per file (each once: {want}): {got}\n" + "\n".join(shared.hub.log.lines())
    assert time.monotonic() - t0 < 60



# ---------------------------------------------------------------------------- 6. a poisoned copy inside the cache
POISON = """\
import hashlib
folder = Path(os.environ["FOLDER"])
manifest = Path(os.environ["MANIFEST"])
weights = folder / "model.safetensors"
data = bytearray(weights.read_bytes())
data[-1] ^= 0xFF  # A's own file: A may write it
weights.write_bytes(bytes(data))
m = json.loads(manifest.read_text())
for f in m["files"]:
    if f["path"] == "model.safetensors":
        f["sha256"] = hashlib.sha256(data).hexdigest()
tmp = manifest.with_name(".poison.tmp")
tmp.write_text(json.dumps(m))
os.chmod(tmp, 0o644)
os.replace(tmp, manifest)  # A's own manifest: A may replace it
"""


def test_copy_another_user_poisoned_is_not_handed_to_b(shared):
    """Inside the cache, no link, one owner: A stages bert, then changes its weights and
    rewrites its own manifest to match. Every trust rule on ownership and place holds, yet the
    bytes are not the hub's: B's stage must not hand them to B (re-check against the hub's
    listing, or stage B's own copy, or refuse)."""
    first = shared.hpcft(shared.a, "stage", "bert-base-uncased", "--json")
    assert first.rc == 0, str(first)
    folder = Path(json.loads(first.out)["assets"][0]["path"])
    [manifest] = [p for p in (shared.cache / "manifests" / "model").glob("*.json")
                  if json.loads(p.read_text()).get("repo_id") == BERT]
    shared.as_a(POISON, folder=folder, manifest=manifest)
    before = shared.outside()
    proc = shared.hpcft(shared.b, "stage", "bert-base-uncased", "--json")
    shared.assert_untouched(before)
    shared.assert_staged_or_refused(proc, {("model", BERT)})
