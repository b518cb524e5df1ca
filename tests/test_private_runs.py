"""Private run folders, and a worker that unpickles only what nobody else could have written
(issue 26, finding 5: a group member swapped a held job's submitit pickle and it ran as its owner).

Unit tests: the folders hpcft makes are 0700 under umask 002, a shared ``runs_dir`` is used
only sticky, and :mod:`hpcft.worker.pickle_guard` refuses a pickle or folder others may write,
a link, a hard link, a FIFO, and one another user owns (a real second user: devtools/users.py).

On the dev Slurm cluster, with real users ``hpcftb`` (victim B: umask 002, primary group
``hpcftshare``) and ``hpcfta`` (attacker A, in that group): B submits held jobs, A attacks their
pickles, the jobs are released. A's payload would leave a marker file; it never does, and a
job whose pickle A could reach fails with the guard's one line in its log.

Needs root and useradd/runuser (real users), and the dev cluster: under CI=true a missing one
fails, otherwise the tests that need it skip.
"""

from __future__ import annotations

import grp
import json
import os
import pickle
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from devtools import users
from devtools.wait import wait_for
from hpcft.core.config import Settings
from hpcft.core.errors import ConfigError
from hpcft.core.rundir import RunPaths, make_private_dir, write_private_pickle
from hpcft.runs.index import RunStore, new_run_dir
from hpcft.submit.pipeline import private_submitit_folder
from hpcft.worker.pickle_guard import EXIT_REFUSED, Refused, read_trusted
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
GROUP = "hpcftshare"
BASE = Path("/tmp/hpcft-private-runs")   # root-owned 0755: each test's world is a fresh folder in it
ME = pwd.getpwuid(os.getuid()).pw_name
# the attacker's pickle: on load it leaves a marker at $MARK (the path when it was made), as whoever loads it
EVIL = """\
import os, pickle
class Evil:
    def __reduce__(self):
        return (os.system, ("id > " + os.environ["MARK"],))
EVIL = pickle.dumps(Evil())
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask002():
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def _unavailable(why: str):
    if IN_CI:
        pytest.fail(f"real users are required under CI=true: {why}")
    pytest.skip(f"no real users: {why}")


@dataclass(frozen=True)
class People:
    a: users.User   # the attacker
    b: users.User   # the victim
    python: str     # an interpreter both can run
    src: Path       # where it imports hpcft from


@pytest.fixture(scope="module")
def people():
    """Users hpcfta and hpcftb in group hpcftshare (made if missing, as tests/test_shared_cache.py
    makes them). Their homes are not used: each test works in a folder of its own under BASE."""
    try:
        users.check_tools()
        users.ensure_group(GROUP)
        a, b = users.ensure_user("hpcfta", GROUP), users.ensure_user("hpcftb", GROUP)
        python, src = users.user_python(b, ROOT)
    except users.Unavailable as exc:
        _unavailable(str(exc))
    return People(a, b, python, src)


# ---------------------------------------------------------------------------- folders hpcft makes
def test_home_runs_root_run_folder_and_submitit_are_0700_under_umask_002(tmp_path, monkeypatch, umask002):
    home = tmp_path / "new" / "hpcft"
    monkeypatch.setenv("HPCFT_HOME", str(home))
    paths = new_run_dir(Settings().runs, "x")
    private_submitit_folder(paths)
    for folder in (home, home / "runs", paths.dir, paths.submitit):
        assert mode(folder) == 0o700, f"{folder}: {mode(folder):o}"
    pkl = paths.submitit / "1_submitted.pkl"
    write_private_pickle(DelayedSubmission(print, "x"), pkl)
    assert mode(pkl) == 0o600
    assert mode(tmp_path / "new") == 0o775  # above HPCFT_HOME: not hpcft's, made as mkdir -p makes it


def test_your_own_group_writable_home_and_runs_root_lose_their_write_bits(tmp_path, monkeypatch, umask002):
    """What an older hpcft made under umask 002: yours, so hpcft closes it and goes on; read access,
    which you may give on purpose, stays."""
    home = tmp_path / "hpcft"
    (home / "runs").mkdir(parents=True)
    os.chmod(home, 0o2775)
    os.chmod(home / "runs", 0o775)
    monkeypatch.setenv("HPCFT_HOME", str(home))
    paths = new_run_dir(Settings().runs, "x")
    assert (mode(home), mode(home / "runs"), mode(paths.dir)) == (0o2755, 0o755, 0o700)


def test_a_shared_runs_dir_is_refused_unless_sticky(tmp_path, umask002):
    lab = tmp_path / "lab"
    lab.mkdir()
    os.chmod(lab, 0o2775)
    with pytest.raises(ConfigError) as err:
        new_run_dir(Settings(runs_dir=lab).runs, "x")
    [line] = err.value.lines()
    assert f"runs_dir {lab} (mode 2775, owner {ME})" in line and f"chmod +t {lab}" in line, line
    assert list(lab.iterdir()) == [] and mode(lab) == 0o2775  # nothing made in it, nothing changed
    os.chmod(lab, 0o3775)
    paths = new_run_dir(Settings(runs_dir=lab).runs, "x")
    assert mode(paths.dir) == 0o700  # no setgid bit from the group folder either


def test_another_users_runs_dir_needs_the_sticky_bit_too_and_keeps_an_index_of_yours(tmp_path, people):
    lab = tmp_path / "lab"
    lab.mkdir()
    os.chown(lab, people.a.uid, people.a.gid)
    os.chmod(lab, 0o777)
    with pytest.raises(ConfigError, match=f"mode 0777, owner {people.a.name}"):
        new_run_dir(lab, "x")
    os.chmod(lab, 0o1777)
    assert mode(new_run_dir(lab, "x").dir) == 0o700
    store = RunStore(lab)
    assert store.index.name == f"index.{os.getuid()}.jsonl"  # index.jsonl is the folder owner's
    store.index.write_text("")  # made first by A, to list A's runs as yours: refused, not read
    os.chown(store.index, people.a.uid, people.a.gid)
    with pytest.raises(ConfigError) as err:
        new_run_dir(lab, "x")
    [line] = err.value.lines()
    assert line.startswith(f"{store.index} (owner {people.a.name}, mode 0644) is not your own file"), line
    with pytest.raises(ConfigError):
        store.entries()


# ---------------------------------------------------------------------------- the guard, in process
def a_run(tmp_path: Path, job_id: str = "4242") -> tuple[RunPaths, Path]:
    """A private run folder with a private pickle that, run, writes ``ran`` into ``marker``."""
    paths = RunPaths(tmp_path / "run")
    make_private_dir(paths.dir)
    make_private_dir(paths.submitit)
    pkl = paths.submitit / f"{job_id}_submitted.pkl"
    write_private_pickle(DelayedSubmission((tmp_path / "marker").write_text, "ran"), pkl)
    return paths, pkl


def refusal(pkl: Path) -> str:
    with pytest.raises(Refused) as err:
        read_trusted(pkl)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"hpcft: refusing to unpickle {pkl}"), line
    return line


def test_the_guard_reads_a_private_pickle(tmp_path):
    _, pkl = a_run(tmp_path)
    assert read_trusted(pkl) == pkl.read_bytes()


def test_the_guard_refuses_a_pickle_others_may_write(tmp_path):
    _, pkl = a_run(tmp_path)
    os.chmod(pkl, 0o664)
    assert f"(owner {ME}, mode 0664): it may be written by others" in refusal(pkl)


def test_the_guard_refuses_a_link_and_a_hard_link(tmp_path):
    paths, pkl = a_run(tmp_path)
    elsewhere = tmp_path / "elsewhere.pkl"
    os.rename(pkl, elsewhere)
    pkl.symlink_to(elsewhere)
    assert "it is a symbolic link" in refusal(pkl)
    pkl.unlink()
    os.link(elsewhere, pkl)
    assert "has 2 names (a hard link)" in refusal(pkl)


def test_the_guard_refuses_a_fifo_without_waiting_on_it(tmp_path):
    _, pkl = a_run(tmp_path)
    pkl.unlink()
    os.mkfifo(pkl, 0o600)
    assert "it is not a regular file" in refusal(pkl)


@pytest.mark.parametrize("which", ["run", "submitit"])
def test_the_guard_refuses_a_folder_others_may_write_unless_sticky(tmp_path, which):
    paths, pkl = a_run(tmp_path)
    folder = paths.dir if which == "run" else paths.submitit
    os.chmod(folder, 0o775)
    assert f"its folder {folder} (owner {ME}, mode 0775) is writable by others and not sticky" in refusal(pkl)
    os.chmod(folder, 0o1777)
    assert read_trusted(pkl) == pkl.read_bytes()


def test_the_guard_refuses_a_linked_submitit_folder(tmp_path):
    paths, pkl = a_run(tmp_path)
    os.rename(paths.submitit, tmp_path / "real-submitit")
    paths.submitit.symlink_to(tmp_path / "real-submitit")
    assert f": {paths.submitit}: it is a symbolic link" in refusal(pkl)


def test_the_guard_refuses_what_another_user_owns(tmp_path, people):
    paths, pkl = a_run(tmp_path)
    os.chown(pkl, people.a.uid, people.a.gid)
    assert f"(owner {people.a.name}, mode 0600): it belongs to {people.a.name}, not to {ME}" in refusal(pkl)
    os.chown(pkl, os.getuid(), os.getgid())
    os.chown(paths.submitit, people.a.uid, people.a.gid)
    assert f"its folder {paths.submitit} (owner {people.a.name}, mode 0700) belongs to" in refusal(pkl)


# ---------------------------------------------------------------------------- the guard as the job runs it
def run_guard(paths: RunPaths, job_id: str = "4242", **extra: str) -> subprocess.CompletedProcess:
    """``python -m hpcft.worker.pickle_guard FOLDER`` as srun starts it in a Slurm task."""
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job_id, "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_JOB_NODELIST": "localhost", "PYTHONPATH": str(ROOT), **extra}
    return subprocess.run([sys.executable, "-u", "-m", "hpcft.worker.pickle_guard", str(paths.submitit)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_the_guarded_launcher_runs_a_trusted_pickle_and_writes_its_result_0600(tmp_path, umask002):
    paths, _ = a_run(tmp_path)
    proc = run_guard(paths)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "marker").read_text() == "ran"
    result = paths.submitit / "4242_0_result.pkl"
    assert mode(result) == 0o600 and pickle.loads(result.read_bytes()) == ("success", 3)  # write_text's count


def test_the_guarded_launcher_loads_nothing_from_a_pickle_others_may_write(tmp_path, monkeypatch):
    paths, pkl = a_run(tmp_path)
    monkeypatch.setenv("MARK", str(tmp_path / "pwned"))  # the marker's path, baked into the payload
    namespace: dict = {}
    exec(EVIL, namespace)
    pkl.write_bytes(namespace["EVIL"])
    os.chmod(pkl, 0o666)
    proc = run_guard(paths)
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"hpcft: refusing to unpickle {pkl} (owner {ME}, mode 0666): "
                                                "it may be written by others than its owner"]
    assert not (tmp_path / "pwned").exists() and not (paths.submitit / "4242_0_result.pkl").exists()


# ---------------------------------------------------------------------------- on the dev cluster
class World:
    """A fresh folder under BASE: B's home (0755, B's, group hpcftshare, as on many clusters), a
    1777 folder for the attacker's marker, and running things as A or as B."""

    def __init__(self, people: People, slurm_conf: str):
        self.people, self.slurm_conf = people, slurm_conf
        users.root_dir(BASE)
        self.dir = Path(tempfile.mkdtemp(dir=BASE))
        os.chmod(self.dir, 0o755)
        self.bhome = self.dir / "b"
        self.bhome.mkdir(mode=0o755)
        (self.bhome / "hello.py").write_text('print("B\'s job ran")\n')
        self.mark = self.dir / "mark"
        self.mark.mkdir()
        os.chmod(self.mark, 0o1777)
        self.config = self.dir / "cluster.yaml"
        for p in (self.bhome, self.bhome / "hello.py"):
            os.chown(p, people.b.uid, grp.getgrnam(GROUP).gr_gid)
        self.jobs: list[str] = []

    def job_file(self, name: str) -> Path:
        path = self.bhome / f"{name}.yaml"
        path.write_text(f'name: {name}\nscript: hello.py\n'
                        'resources: {partition: cpu, time: "5", sbatch: ["--hold"]}\n')
        os.chown(path, self.people.b.uid, self.people.b.gid)
        return path

    def as_b(self, *argv: str, user: users.User | None = None) -> subprocess.CompletedProcess:
        """``argv`` as B (or ``user``) with umask 002 and hpcftshare as primary group: what B's files
        get. B's home is the world's b/, another user's is hpcft's state only (HPCFT_HOME)."""
        user = user or self.people.b
        home = self.bhome if user == self.people.b else self.dir / user.name
        if not home.exists():
            home.mkdir(mode=0o755)
            os.chown(home, user.uid, user.gid)
        env = {"PATH": users.BASE_PATH, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8",
               "HOME": str(home), "HPCFT_HOME": str(home / "hpcft"), "HPCFT_CONFIG": str(self.config),
               "XDG_CONFIG_HOME": str(home / ".config"), "PYTHONPATH": str(self.people.src),
               "PYTHONDONTWRITEBYTECODE": "1", "SLURM_CONF": self.slurm_conf}
        cmd = ["runuser", "-u", user.name, "-g", GROUP, "--", "sh", "-c", 'umask 002 && exec "$@"', "sh",
               "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=self.bhome, timeout=120)

    def submit(self, name: str, user: users.User | None = None) -> dict:
        proc = self.as_b(self.people.python, "-m", "hpcft.cli.main", "submit", str(self.job_file(name)), "--json",
                         user=user)
        assert proc.returncode == 0, f"the submit failed:\n{proc.stdout}\n{proc.stderr}"
        res = json.loads(proc.stdout)
        self.jobs.append(res["job_id"])
        return res

    def as_a(self, code: str, **values: str) -> dict:
        """``code`` (after EVIL) as the attacker; it prints one JSON object, returned."""
        env = {"HOME": str(self.dir), "MARK": str(self.mark / "pwned"), "PYTHONDONTWRITEBYTECODE": "1",
               **{k.upper(): str(v) for k, v in values.items()}}
        cmd = users.as_user(self.people.a, [self.people.python, "-c", EVIL + code], env)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=60)
        assert proc.returncode == 0, f"the attacker's own step failed:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout)

    def release_and_wait(self, *job_ids: str) -> dict[str, str]:
        """Release the held jobs; their final states (from scontrol: no accounting needed)."""
        subprocess.run(["scontrol", "release", ",".join(job_ids)], check=True, capture_output=True)
        wait_for(lambda: subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"],
                                        capture_output=True, text=True).stdout.strip(),
                 until=lambda out: out == "", timeout=60, interval=0.5, what=f"jobs {job_ids} to leave the queue")
        states = {}
        for jid in job_ids:
            out = subprocess.run(["scontrol", "-o", "show", "job", jid], capture_output=True, text=True).stdout
            states[jid] = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), out)
        return states

    def close(self) -> None:
        if self.jobs:
            subprocess.run(["scancel", *self.jobs], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def world(people, slurm):
    w = World(people, slurm)
    yield w
    w.close()


ATTACK_PRIVATE = """
import errno, json, os
run, pkl, got = os.environ["RUN"], os.environ["PKL"], {}
for what, step in (("list", lambda: os.listdir(run)),
                   ("replace", lambda: open(pkl + ".evil", "wb").write(EVIL) and os.replace(pkl + ".evil", pkl))):
    try:
        step()
        got[what] = "done"
    except OSError as exc:
        got[what] = errno.errorcode[exc.errno]
print(json.dumps(got))
"""


@pytest.mark.slurm
def test_a_held_jobs_pickle_is_out_of_a_group_members_reach(world):
    res = world.submit("p26-private")
    run_dir = Path(res["run_dir"])
    pkl = run_dir / "submitit" / f"{res['job_id']}_submitted.pkl"
    home = world.bhome / "hpcft"
    assert {p.name: oct(mode(p)) for p in (home, home / "runs", run_dir, run_dir / "submitit")} == \
        {p.name: "0o700" for p in (home, home / "runs", run_dir, run_dir / "submitit")}
    assert mode(pkl) == 0o600 and os.stat(pkl).st_uid == world.people.b.uid
    assert world.as_a(ATTACK_PRIVATE, run=run_dir, pkl=pkl) == {"list": "EACCES", "replace": "EACCES"}
    states = world.release_and_wait(res["job_id"])
    log = (run_dir / f"job.{res['job_id']}.out").read_text()
    assert states == {res["job_id"]: "COMPLETED"} and "B's job ran" in log, log
    assert not (world.mark / "pwned").exists()


ATTACK_SHARED = """
import errno, json, os
inplace, swap, got = os.environ["INPLACE"], os.environ["SWAP"], {}
def attempt(what, step):
    try:
        step()
        got[what] = "done"
    except OSError as exc:
        got[what] = errno.errorcode[exc.errno]
def write(path, mode=None):
    with open(path, "wb") as fh:
        fh.write(EVIL)
        if mode is not None:
            os.fchmod(fh.fileno(), mode)
attempt("rename over B's pickle in a sticky folder", lambda: write(inplace + ".evil") or os.replace(inplace + ".evil", inplace))
attempt("rewrite B's group-writable pickle", lambda: write(inplace))
attempt("replace B's pickle in a folder that was not sticky",
        lambda: write(swap + ".evil", 0o644) or os.replace(swap + ".evil", swap))
print(json.dumps(got))
"""

LOOSEN = """
import os, sys
inplace, swap = sys.argv[1], sys.argv[2]
for d in (os.path.dirname(os.path.dirname(inplace)), os.path.dirname(inplace)):
    os.chmod(d, 0o1775)   # opened to the group by hand, sticky as the lab folder
os.chmod(inplace, 0o664)
for d in (os.path.dirname(os.path.dirname(swap)), os.path.dirname(swap)):
    os.chmod(d, 0o775)    # what hpcft made under umask 002 before it made run folders private
"""


@pytest.mark.slurm
def test_a_shared_runs_dir_must_be_sticky_and_the_worker_refuses_pickles_others_could_write(world):
    lab = world.dir / "lab"
    lab.mkdir()
    os.chown(lab, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(lab, 0o2775)  # a lab's group folder, without the sticky bit
    world.config.write_text(f"runs_dir: {lab}\n")
    proc = world.as_b(world.people.python, "-m", "hpcft.cli.main", "submit", str(world.job_file("p26-lab")), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"runs_dir {lab} (mode 2775, owner root)" in proc.stderr and f"chmod +t {lab}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(lab.iterdir()) == [], proc.stderr

    os.chmod(lab, 0o3775)  # what the refusal asks of the folder's owner
    inplace, swap = world.submit("p26-inplace"), world.submit("p26-swap")
    mine = world.submit("p26-a-own", user=world.people.a)  # the lab's other member submits there too
    assert Path(mine["run_dir"]).parent == lab
    indexes = {p.name: len(p.read_text().splitlines()) for p in lab.glob("index*.jsonl")}
    assert indexes == {f"index.{world.people.b.uid}.jsonl": 2, f"index.{world.people.a.uid}.jsonl": 1}
    pkls = {}
    for res in (inplace, swap):
        run_dir = Path(res["run_dir"])
        pkls[res["job_id"]] = run_dir / "submitit" / f"{res['job_id']}_submitted.pkl"
        assert run_dir.parent == lab and mode(run_dir) == mode(run_dir / "submitit") == 0o700
        assert world.as_a(ATTACK_PRIVATE, run=run_dir, pkl=pkls[res["job_id"]]) == \
            {"list": "EACCES", "replace": "EACCES"}
    # Past the private folders: B opens one run to the group (sticky), and the other is as an older
    # hpcft left it under umask 002. A rewrites the first pickle in place and swaps the second;
    # then B closes that run's folders again, which leaves A's file in place.
    a_pkl, s_pkl = pkls[inplace["job_id"]], pkls[swap["job_id"]]
    proc = world.as_b(world.people.python, "-c", LOOSEN, str(a_pkl), str(s_pkl))
    assert proc.returncode == 0, proc.stderr
    assert world.as_a(ATTACK_SHARED, inplace=a_pkl, swap=s_pkl) == {
        "rename over B's pickle in a sticky folder": "EPERM", "rewrite B's group-writable pickle": "done",
        "replace B's pickle in a folder that was not sticky": "done"}
    proc = world.as_b("chmod", "700", str(s_pkl.parent.parent), str(s_pkl.parent))
    assert proc.returncode == 0, proc.stderr

    states = world.release_and_wait(inplace["job_id"], swap["job_id"])
    assert states == {inplace["job_id"]: "FAILED", swap["job_id"]: "FAILED"}
    a, b = world.people.a.name, world.people.b.name
    want = {inplace["job_id"]: f"hpcft: refusing to unpickle {a_pkl} (owner {b}, mode 0664): "
                               "it may be written by others than its owner",
            swap["job_id"]: f"hpcft: refusing to unpickle {s_pkl} (owner {a}, mode 0644): it belongs to {a}, "
                            f"not to {b}, the job's user: somebody else put it there"}
    for jid, line in want.items():
        err = (Path(pkls[jid]).parent.parent / f"job.{jid}.err").read_text()
        assert [ln for ln in err.splitlines() if ln.startswith("hpcft: ")] == [line], err
        assert "Traceback" not in err, err
    assert not (world.mark / "pwned").exists()
