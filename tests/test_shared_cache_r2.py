"""Trust, round 2 (issue 26): two real Unix users in one cache group; A attacks B.

The set-up is tests/test_shared_cache.py's (users hpcfta/hpcftb, group hpcftshare, a cache an
admin made 3775). Each test is one finding: A prepares the attack as A, then B runs what B would
run (stage, a job's own Python with the environment the sbatch script exports, cache ls/verify).
It must fail safely: no code of A's runs as B, B's job reads the mirror's bytes, nothing outside
A's own files is removed, and a refusal is one line naming A.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from devtools.hub.pytest_fixtures import hub, hub_fixtures, hub_server  # noqa: F401
from hpcft.core.offline import offline_env
from tests.test_shared_cache import BERT, GLUE, Shared, people, shared  # noqa: F401

pytestmark = pytest.mark.hub

A_NAME = "hpcfta"


def job_env(sh: Shared, **extra: str) -> dict[str, str]:
    """What B's job gets on the node: the offline environment the sbatch script exports."""
    src, b = sh.people.src, sh.b
    return {**sh.env(b), **offline_env(sh.cache, str(src), private=b.home / "hpcft" / "runtime"),
            "PYTHONPATH": f"{src / 'hpcft' / 'offline_shim'}:{src}", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error", **extra}


def as_b_job(sh: Shared, code: str, **extra: str):
    proc = sh.run(sh.b, [sh.people.python, "-c", code], job_env(sh, **extra))
    assert "Traceback" not in proc.err, str(proc)
    return proc


def staged(sh: Shared, user, *args: str) -> dict:
    proc = sh.hpcft(user, "stage", *args, "--json")
    assert proc.rc == 0, str(proc)
    return {(a["kind"], a["repo_id"]): a for a in json.loads(proc.out)["assets"]}


def marker() -> Path:
    return Path(f"/tmp/hpcft-pwned-{secrets.token_hex(4)}")


# ---------------------------------------------------------------------------- 1. module caches
PLANT_MODULES = """\
import evaluate, glob
m = evaluate.load(os.environ["SCRIPT"], "mrpc")   # as A's job did with the old shared HF_MODULES_CACHE
evil = f"open({os.environ['MARK']!r}, 'w').write(os.environ.get('USER', '?'))\\n"
planted = 0
for p in glob.glob(str(C / "hf/modules/**/glue.py"), recursive=True):
    Path(p).write_text(evil + Path(p).read_text())
    planted += 1
tm = C / "hf/modules/transformers_modules"
mk(tm)
(tm / "__init__.py").write_text(evil)
assert planted, "evaluate wrote no module copy to plant into"
"""

B_METRIC_JOB = """\
import evaluate
m = evaluate.load("glue", "mrpc")
print(json.dumps(m.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])))
from transformers.dynamic_module_utils import create_dynamic_module, init_hf_modules
init_hf_modules()
create_dynamic_module("transformers_modules")   # what every trust_remote_code load does first
import transformers_modules
print("MODULES", transformers_modules.__file__)
"""


def test_planted_module_code_never_runs_in_b_job(shared):
    """Finding 1: A plants evaluate's and transformers' module copies in the old shared
    hf/modules. B's job loads the metric and a remote-code module folder: none of A's code runs."""
    assets = staged(shared, shared.b, "--metric", "glue")
    script = Path(assets[("metric", "evaluate-metric/glue")]["path"]) / "glue.py"
    mark = marker()
    shared.run(shared.a, [shared.people.python, "-c", "import json, os, sys\nfrom pathlib import Path\n"
                          f"C = Path({str(shared.cache)!r})\n" + MK + PLANT_MODULES],
               {**shared.env(shared.a), "HF_MODULES_CACHE": str(shared.cache / "hf/modules"), "MARK": str(mark),
                "SCRIPT": str(script), "HF_EVALUATE_OFFLINE": "1", "DIRMODE": "0o3775"})
    assert shared.log[-1].rc == 0, str(shared.log[-1])
    proc = as_b_job(shared, "import json\n" + B_METRIC_JOB)
    assert proc.rc == 0 and '"f1"' in proc.out, str(proc)
    assert not mark.exists(), f"A's planted code ran as {mark.read_text()}:\n{proc}"
    assert str(shared.b.home / "hpcft" / "runtime") in proc.out, f"transformers' modules are not B's own:\n{proc}"
    doctor = shared.hpcft(shared.b, "cache", "doctor")
    said = doctor.out + doctor.err
    assert "hf/modules" in said and A_NAME in said, f"doctor does not name A's plant:\n{doctor}"


MK = """\
def mk(p):
    p, todo = Path(p), []
    while not os.path.lexists(p):
        todo.append(p)
        p = p.parent
    for d in reversed(todo):
        d.mkdir()
        os.chmod(d, 0o3775)
"""


# ---------------------------------------------------------------------------- 2. the Arrow cache
POISON_ARROW = """\
import datasets, glob
datasets.load_dataset(os.environ["FOLDER"], "mrpc")     # A's job, with the old shared HF_DATASETS_CACHE
arrows = glob.glob(str(C / "hf/datasets/**/*.arrow"), recursive=True)
assert arrows, "no arrow cache to poison"
for p in arrows:
    Path(p).write_bytes(b"\\0" * 64)
for p in glob.glob(str(C / "hf/datasets/**/*.lock"), recursive=True):
    Path(p).write_text("held by A")      # datasets' own lock files, left behind by A
for p in glob.glob(str(C / "hf/datasets/**/"), recursive=True):
    if os.path.isdir(p) and not p.rstrip("/").endswith(".lock"):
        Path(p, "stale.incomplete_info.lock").write_text("")
"""

B_DATA_JOB = """\
import json
from datasets import load_dataset
import pyarrow.parquet as pq
ds = load_dataset("glue", "mrpc")
files = [f["filename"] for f in ds["train"].cache_files]
want = pq.read_table(__import__("glob").glob(__import__("os").environ["FOLDER"] + "/mrpc/train-*.parquet")[0])
print(json.dumps({"rows": ds["train"].num_rows, "same": ds["train"][0]["sentence1"] == want.column("sentence1")[0].as_py(),
                  "files": files}))
"""


def test_poisoned_shared_arrow_cache_is_not_read(shared):
    """Finding 2: A rewrites the arrow cache of B's dataset in the old shared hf/datasets and leaves
    lock files: B's job reads its own cache, built from the staged parquet."""
    folder = staged(shared, shared.b, "glue/mrpc")[("dataset", GLUE)]["path"]
    shared.run(shared.a, [shared.people.python, "-c", "import os\nfrom pathlib import Path\n"
                          f"C = Path({str(shared.cache)!r})\n" + MK + "mk(C / 'hf/datasets')\n" + POISON_ARROW],
               {**shared.env(shared.a), "HF_DATASETS_CACHE": str(shared.cache / "hf/datasets"), "FOLDER": folder,
                "HF_DATASETS_OFFLINE": "1"})
    assert shared.log[-1].rc == 0, str(shared.log[-1])
    proc = as_b_job(shared, B_DATA_JOB, FOLDER=folder)
    assert proc.rc == 0, str(proc)
    got = json.loads(proc.out.strip().splitlines()[-1])
    assert got["same"] and got["rows"] > 0, got
    runtime = str(shared.b.home / "hpcft" / "runtime")
    assert got["files"] and all(f.startswith(runtime) for f in got["files"]), got


# ---------------------------------------------------------------------------- 3. manifests
SECOND_MANIFEST = """\
import shutil
src = Path(os.environ["FOLDER"])
mine = src.with_name(src.name + ".u" + str(os.getuid()))
shutil.copytree(src, mine)
for p in mine.rglob("*.parquet"):
    p.write_bytes(b"A's data")
m = json.loads((C / "manifests/dataset/nyu-mll--glue@mrpc.json").read_text())
m["path"] = str(mine)
for name in (os.environ["NAME"],):
    out = C / "manifests/dataset" / name
    out.write_text(json.dumps(m))
    os.chmod(out, 0o644)
"""

SHIM_LOOKUP = """\
import json, sitecustomize
print(json.dumps(sitecustomize.staged_dataset("glue", "mrpc")))
"""


@pytest.mark.parametrize("name", ["aaa-nyu-mll--glue@mrpc.json", "nyu-mll--glue@mrpc.json.json"])
def test_a_second_manifest_for_b_asset_is_ignored_and_reported(shared, name):
    """Finding 3a: a second manifest (another file name, same repo id and config) pointing at A's
    copy: B's job gets B's copy, ls shows one row, verify fails naming A."""
    folder = staged(shared, shared.b, "glue/mrpc")[("dataset", GLUE)]["path"]
    shared.as_a("import json\n" + SECOND_MANIFEST, folder=folder, name=name)
    proc = as_b_job(shared, SHIM_LOOKUP)
    assert proc.rc == 0 and json.loads(proc.out.strip().splitlines()[-1]) == [folder, "mrpc"], str(proc)
    ls = json.loads(shared.hpcft(shared.b, "cache", "ls", "--json").out)
    assert [a["name"] for a in ls["assets"] if a["name"].startswith(GLUE)] == [f"{GLUE}:mrpc"], ls
    verify = shared.hpcft(shared.b, "cache", "verify")
    assert verify.rc != 0 and A_NAME in verify.err and name in verify.err, str(verify)


ALIAS_CLAIM = """\
snap = C / "hf/hub/datasets--aaa--block/snapshots" / ("1" * 40)
mk(snap.parent)
(snap / "mrpc").mkdir(parents=True)
(snap / "mrpc/train-00000-of-00001.parquet").write_bytes(b"A's data")
for p in [snap, snap / "mrpc"]:
    os.chmod(p, 0o2755)
os.chmod(snap / "mrpc/train-00000-of-00001.parquet", 0o644)
import hashlib
m = {"kind": "dataset", "repo_id": "aaa/block", "config": "mrpc", "aliases": ["glue", "nyu-mll/glue"],
     "source": "hf", "endpoint": None, "revision": "main", "sha": "1" * 40, "path": str(snap),
     "files": [{"path": "mrpc/train-00000-of-00001.parquet", "size": 8,
                "sha256": hashlib.sha256(b"A's data").hexdigest()}], "size": 8}
mk(C / "manifests/dataset")
out = C / "manifests/dataset/aaa--block@mrpc.json"
out.write_text(json.dumps(m))
os.chmod(out, 0o644)
"""


def test_an_alias_claimed_by_another_user_is_not_followed(shared):
    """Finding 3c: A stages aaa/block claiming the names glue and nyu-mll/glue. B's job does not get
    A's folder; B's stage fetches the real glue from the hub."""
    shared.as_a("import json\n" + ALIAS_CLAIM)
    proc = as_b_job(shared, SHIM_LOOKUP)
    assert proc.rc == 0 and json.loads(proc.out.strip().splitlines()[-1]) is None, str(proc)
    assert A_NAME in proc.err and "not followed" in proc.err, str(proc)
    stage = shared.hpcft(shared.b, "stage", "glue/mrpc", "--json")
    assert shared.assert_staged_or_refused(stage, {("dataset", GLUE)}) == "staged"


REWRITE_AS_LOCAL = """\
import hashlib
folder, manifest = Path(os.environ["FOLDER"]), Path(os.environ["MANIFEST"])
m = json.loads(manifest.read_text())
if os.environ["HOW"] in ("local", "changed"):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()[:-4] + b"EVIL"
    weights.write_bytes(data)
    for f in m["files"]:
        if f["path"] == "model.safetensors":
            f["sha256"] = hashlib.sha256(data).hexdigest()
    if os.environ["HOW"] == "local":
        m["source"] = "local"
if os.environ["HOW"] == "unlisted":
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "x"}')
    os.chmod(folder / "adapter_config.json", 0o644)
tmp = manifest.with_name(".a.tmp")
tmp.write_text(json.dumps(m))
os.chmod(tmp, 0o644)
os.replace(tmp, manifest)
"""

LOOKUP = """\
from pathlib import Path
from hpcft.core.assets import lookup
from hpcft.core.config import load_settings
from hpcft.core.resolve import load_table
from hpcft.core.store import Cache
s = load_settings()
a = lookup("model", "bert-base-uncased", Cache(s.cache), load_table(s))
print("PATH", a.path, "REFUSED", a.refused)
"""


@pytest.mark.parametrize("how", ["local", "unlisted", "changed"])
def test_another_users_copy_is_refused_unless_the_mirror_vouches(shared, how):
    """Findings 3b, 3d, 3e: A's copy of bert rewritten and marked source local; or holding an
    adapter_config.json the mirror does not list; or changed after B's stage accepted it. B's
    stage refuses it naming A, and B's lookups (check, submit, the job) do not use it."""
    folder = staged(shared, shared.a, "bert-base-uncased")[("model", BERT)]["path"]
    manifest = shared.cache / "manifests/model/google-bert--bert-base-uncased.json"
    if how == "changed":  # B accepts A's copy first; A changes it afterwards
        first = shared.hpcft(shared.b, "stage", "bert-base-uncased", "--json")
        assert first.rc == 0 and json.loads(first.out)["assets"][0]["path"] == folder, str(first)
        before = as_b_job(shared, LOOKUP)
        assert f"PATH {folder} REFUSED \n" in before.out + "\n", str(before)
    shared.as_a("import json\n" + REWRITE_AS_LOCAL, folder=folder, manifest=manifest, how=how)
    proc = shared.hpcft(shared.b, "stage", "bert-base-uncased", "--json")
    assert proc.rc != 0 and "Traceback" not in proc.err, f"B's stage accepted A's altered copy:\n{proc}"
    last = proc.err.strip().splitlines()[-1]
    assert A_NAME in last, f"the refusal does not name A:\n{proc}"
    look = as_b_job(shared, LOOKUP)
    assert "PATH None" in look.out and A_NAME in look.out, f"B's lookup hands out A's altered copy:\n{look}"


# ---------------------------------------------------------------------------- 4. cache rm
def test_admin_cache_rm_of_a_manifest_naming_hf_hub_removes_nothing(shared):
    """Finding 4: A's manifest names the whole hf/hub with no files; the admin's cache rm refuses
    (the manifest is not bound to an asset), without a traceback, and B's model stays."""
    folder = Path(staged(shared, shared.b, "bert-base-uncased")[("model", BERT)]["path"])
    shared.as_a("import json\nmk(C / 'manifests/model')\n"
                "m = {'kind': 'model', 'repo_id': 'org/evil', 'sha': 'x', 'source': 'hf', 'aliases': [],\n"
                "     'path': str(C / 'hf/hub'), 'files': [], 'size': 0}\n"
                "p = C / 'manifests/model/org--evil.json'\np.write_text(json.dumps(m))\nos.chmod(p, 0o644)\n")
    import subprocess
    import sys

    env = {**os.environ, "HPCFT_CONFIG": str(shared.config), "HPCFT_CACHE": str(shared.cache)}
    admin = subprocess.run([sys.executable, "-m", "hpcft.cli.main", "cache", "rm", "org/evil"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert admin.returncode != 0 and "Traceback" not in admin.stderr and admin.stderr.strip(), admin.stderr
    shared.assert_correct(folder, "model", BERT)


# ---------------------------------------------------------------------------- 5. denial of service
BAD_MANIFESTS = """\
mk(C / "manifests/dataset")
bad = {"deep.json": "[" * 200000 + "]" * 200000,
       "nyu-mll--glue@cola.json": json.dumps({"kind": "dataset", "repo_id": "nyu-mll/glue", "aliases": 1}),
       "norepo.json": json.dumps({"kind": "dataset", "path": str(C), "files": []})}
for name, text in bad.items():
    (C / "manifests/dataset" / name).write_text(text)
    os.chmod(C / "manifests/dataset" / name, 0o644)
"""


def test_malformed_manifests_are_warnings_naming_their_owner(shared):
    """Finding 7: a manifest nested 200 000 deep, one with "aliases": 1, one without repo_id: B's
    ls works, verify names each with its owner, B's job still loads its own copy."""
    folder = staged(shared, shared.b, "glue/mrpc")[("dataset", GLUE)]["path"]
    shared.as_a("import json\n" + BAD_MANIFESTS)
    ls = shared.hpcft(shared.b, "cache", "ls")
    assert ls.rc == 0 and "Traceback" not in ls.err, str(ls)
    verify = shared.hpcft(shared.b, "cache", "verify")
    assert verify.rc != 0 and "Traceback" not in verify.err, str(verify)
    lines = [ln for ln in verify.err.splitlines() if "not trusted" in ln]
    assert len(lines) == 3 and all(A_NAME in ln for ln in lines), str(verify)
    proc = as_b_job(shared, SHIM_LOOKUP)
    assert proc.rc == 0 and json.loads(proc.out.strip().splitlines()[-1]) == [folder, "mrpc"], str(proc)
    assert proc.err.count(A_NAME) == 3, str(proc)


LOAD_THEN_RECHECK = """\
import sys
from hpcft.core.assets import changed_since_checked, lookup
from hpcft.core.config import load_settings
from hpcft.core.resolve import load_table
from hpcft.core.store import Cache
s = load_settings()
a = lookup("model", "bert-base-uncased", Cache(s.cache), load_table(s))
print("LOOKED-UP", a.path, a.refused or "-", flush=True)
sys.stdin.readline()          # the job reads its files now; A rewrites them meanwhile
print("CHANGED", changed_since_checked([a]), flush=True)
"""


def test_a_copy_rewritten_while_b_job_loads_it_stops_the_job(shared):
    """A race between the check and the reads: B's job looks up A's copy (accepted: B's stage
    checked it), then A rewrites it while the job loads. The check after the job's setup phase
    (hpcft.worker.task.Task.loaded_as_checked) sees it and names the copy."""
    import subprocess

    from devtools import users

    folder = staged(shared, shared.a, "bert-base-uncased")[("model", BERT)]["path"]
    assert shared.hpcft(shared.b, "stage", "bert-base-uncased", "--json").rc == 0
    cmd = users.as_user(shared.b, [shared.people.python, "-c", LOAD_THEN_RECHECK], job_env(shared))
    job = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=shared.b.home)
    first = job.stdout.readline()
    assert first.startswith(f"LOOKED-UP {folder} -"), first + job.stderr.read()
    shared.as_a("import json\n" + REWRITE_AS_LOCAL, folder=folder,
                manifest=shared.cache / "manifests/model/google-bert--bert-base-uncased.json", how="changed")
    out, err = job.communicate("go\n", timeout=60)
    assert job.returncode == 0 and "Traceback" not in err, out + err
    assert "changed while this job loaded it" in out and folder in out, out + err


HARDLINK = """\
folder = Path(os.environ["FOLDER"])
target = folder / "vocab.txt"
other = Path(os.environ["OTHER"])
if os.environ["HOW"] == "own-file":   # a second name in A's home: A could rewrite it there, unseen in the cache
    os.chmod(AHOME, 0o755)
    other.write_bytes(target.read_bytes())
os.unlink(target)
os.link(other, target)
"""


@pytest.fixture
def hardlinks_allowed():
    """fs.protected_hardlinks=0 for the test (a kernel that lets anyone link files they do not own)."""
    knob = Path("/proc/sys/fs/protected_hardlinks")
    old = knob.read_text().strip()
    knob.write_text("0")
    yield
    knob.write_text(old)


@pytest.mark.parametrize("how", ["own-file", "b-file"])
def test_a_hard_linked_file_makes_a_copy_untrusted(shared, how, request):
    """A's copy of bert whose vocab.txt is a hard link: to a file in A's home (same bytes, so every
    hash matches), or, where the kernel allows it, to B's own staged vocab.txt of another model.
    Neither manifest is trusted; B's lookup does not hand it out and B's stage names A."""
    if how == "b-file":
        request.getfixturevalue("hardlinks_allowed")
        other = Path(staged(shared, shared.b, "bert-base-cased")[("model", "google-bert/bert-base-cased")]["path"])
        other = other / "vocab.txt"
    else:
        other = shared.a.home / "vocab-second-name.txt"
    folder = staged(shared, shared.a, "bert-base-uncased")[("model", BERT)]["path"]
    shared.as_a(HARDLINK, folder=folder, other=other, how=how)
    look = as_b_job(shared, LOOKUP)
    assert "PATH None" in look.out, f"B's lookup hands out a copy with a hard-linked file:\n{look}"
    stage = shared.hpcft(shared.b, "stage", "bert-base-uncased", "--json")
    assert stage.rc != 0 and "Traceback" not in stage.err and A_NAME in stage.err.strip().splitlines()[-1], str(stage)
    verify = shared.hpcft(shared.b, "cache", "verify")
    assert verify.rc != 0 and ("hard link" in verify.err or "another user" in verify.err), str(verify)
    if how == "b-file":  # B's own copy, which A gave a second name, is still B's: B trusts it
        assert as_b_job(shared, LOOKUP.replace('"bert-base-uncased"', '"bert-base-cased"')).out.startswith(
            f"PATH {other.parent} REFUSED")
