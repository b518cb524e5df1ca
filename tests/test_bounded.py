"""Bounded pre-flight and code you can check (issue 26, findings 7 and 8): what another group
member wrote (a model's chat template, a lock file, a staged metric script) cannot hang
``hpcft check``/``stage`` or run unpinned code, and each refusal is one line naming the owner."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.wait import wait_for
from hpcft.core.chat import ChatRenderer, TemplateTokenizer
from hpcft.core.chat_sandbox import RenderLimit

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

HI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


# --------------------------------------------------------------------------- chat templates at pre-flight

def test_a_chat_template_that_loops_for_ever_ends_hpcft_check_with_one_line(tmp_path, run_hpcft):
    """Finding 7: nested range(100000) loops used to hang `hpcft check` (the data-rows rule renders
    the first rows on the model's template). Now the render stops at its time limit."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": forever, "eos_token": "</s>"}))
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": HI}) + "\n")
    (tmp_path / "job.yaml").write_text("name: t\nexecutor: local\ntrain:\n  task: causal-lm\n  model: ./model\n"
                                       "  dataset: data.jsonl\n  max_steps: 1\n")
    res = run_hpcft("check", str(tmp_path / "job.yaml"), cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"hpcft: error: chat template of {model}: rendering exceeded 2 s; refused"]


@pytest.mark.parametrize("template, over", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "0.5 s"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}", "0.5 s"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
     "100000 characters (of output)"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "100000 characters (in one value)"),
    ("{% set ns = namespace(s=['x']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "100000 characters (in one value)"),
    ("{{ 'x' * 1000000000 }}", "100000 characters (in one value)"),
    ("{{ 'x' | center(1000000000) }}", "100000 characters (an argument of 1000000000)"),
    ("{{ '{:>1000000000}'.format(1) }}", "100000 characters (an argument of 1000000000)"),
    ("{{ '%1000000000d' % 1 }}", "100000 characters (an argument of 1000000000)"),
    ("{{ ('{0}' * 1000).format('y' * 1000) }}", "100000 characters (in one value)"),
    ("{{ ('a' * 1000) | replace('a', 'b' * 1000) }}", "100000 characters (in one value)"),
    ("{{ range(1) | batch(10000, 'y' * 1000) | first }}", "100000 characters (in one value)"),
    ("{{ range(100000) | map('center', 100000) | join }}", "6400000 characters (built in all)"),
    ("{{ messages | tojson(indent=1000) }}", "64 characters (the indent of tojson)"),
    ("{% set ns = namespace(s=3) %}{% for i in range(64) %}{% set ns.s = ns.s * ns.s %}{% endfor %}",
     "100000 bits (in one integer)"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "the depth of recursion Python allows"),
], ids=["loops", "exponential-macro", "output", "doubled-string", "doubled-list", "repeat", "width",
        "format-width", "percent-width", "format-fields", "replace", "batch-fill", "built", "tojson-indent",
        "big-int", "recursion"])
def test_a_template_past_a_limit_is_refused_in_one_line_naming_the_model(template, over):
    tok = TemplateTokenizer(template, {}, [], "org/evil", seconds=0.5, chars=100_000)
    with pytest.raises(RenderLimit) as info:
        tok.apply_chat_template(HI)
    assert str(info.value) == f"chat template of org/evil: rendering exceeded {over}; refused"


def test_the_time_limit_also_holds_for_all_renders_together_and_the_renderer_stops_at_once():
    """Many renders each just under the per-render limit cannot add up to a hang: the template's
    renders share one budget; the first one past it ends the pre-flight (ChatRenderer lets it through)."""
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    tok = TemplateTokenizer(forever, {}, [], "org/slow", seconds=5, total_seconds=0.3)
    for _ in range(2):  # the second finds the budget spent
        with pytest.raises(RenderLimit, match=r"^chat template of org/slow: rendering exceeded 0.3 s in all; refused$"):
            ChatRenderer(tok).examples(HI)


def test_a_long_conversation_raises_the_size_limit_and_a_model_folder_is_named_by_its_repo_id(tmp_path):
    long = [{"role": "user", "content": "a" * 5000}, {"role": "assistant", "content": "b"}]
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    tok = TemplateTokenizer(chatml, {}, [], "org/m", chars=1000)
    want = f"<|im_start|>user\n{'a' * 5000}<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
    assert tok.apply_chat_template(long) == want
    with pytest.raises(RenderLimit, match=r"rendering exceeded \d+ characters \(in one value\); refused$"):
        TemplateTokenizer("{{ messages[0].content * 10 }}", {}, [], "org/m", chars=1000).apply_chat_template(long)
    snapshot = tmp_path / "hf" / "hub" / "models--Org--Name" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml}))
    assert TemplateTokenizer.from_folder(snapshot).model == "Org/Name"


def test_the_limited_renderer_loads_no_heavy_library():
    code = ("import sys; from hpcft.core.chat import TemplateTokenizer; "
            "TemplateTokenizer('{{ messages[0].content }}', {}, []).apply_chat_template([{'content': 'x'}]); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- a lock held by another user

HOLD = """
import fcntl, os, pwd, socket, sys, time  # all imported before the drop: /root's Python is 0700
from hpcft.core.safefs import Dir, Lock
folder = Dir.open_root(sys.argv[1])
user = pwd.getpwnam(sys.argv[3])
os.setgroups([]); os.setgid(user.pw_gid); os.setuid(user.pw_uid)
with Lock(folder, sys.argv[2]):
    sys.stdin.read()  # held until the test closes stdin
"""


@pytest.fixture(scope="module")
def other():
    """A real Unix user other than the one running the tests (hpcfta, devtools/users.py)."""
    from devtools import users

    try:
        users.check_tools()
        users.ensure_group("hpcftshare")
        return users.ensure_user("hpcfta", "hpcftshare")
    except users.Unavailable as exc:
        if IN_CI:
            pytest.fail(f"a second user is required under CI=true: {exc}")
        pytest.skip(f"no second user: {exc}")


def _lock_file(cache_root: Path, owner) -> tuple[Path, Path]:
    """The lock of local/lm's model in a fresh cache, created by ``owner`` (as a user of the group would)."""
    from hpcft.core.safefs import Modes
    from hpcft.core.store import Cache
    from hpcft.stage.layout import prepare_cache

    cache = Cache(cache_root)
    prepare_cache(cache, Modes())
    path = cache.lock_path("model", "local/lm")
    path.touch()
    os.chown(path, owner.uid, owner.gid)
    return cache.root / "locks", path


def _is_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_stage_names_the_other_user_holding_the_lock_and_gives_up_after_locks_wait_s(
        other, hpcft_home, tmp_path, run_hpcft):
    """Finding 7: a lock held for ever made `hpcft stage` wait without end and without naming the
    owner. Now it says once who holds it (user and pid, from /proc/locks), gives up after
    locks.wait_s with one line, and has written nothing; once the lock is free it stages."""
    locks, path = _lock_file(hpcft_home / "cache", other)
    (hpcft_home / "no-cluster-config.yaml").write_text("locks:\n  wait_s: 3\n")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text('{"model_type": "bert"}')
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(locks), path.name, other.name],
                              stdin=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        record = wait_for(lambda: path.read_text() if _is_held(path) else "", until=lambda text: text.endswith("\n"),
                          timeout=30, fail=lambda _: holder.poll() is not None,
                          what=f"{other.name}'s process to take {path} and write its record there")
        assert record == f"user={other.name} pid={holder.pid} host={socket.gethostname()}\n"
        res = run_hpcft("stage", str(tmp_path / "lm"), cwd=tmp_path, timeout=60)
        who = f"{other.name} (pid {holder.pid})"
        assert res.returncode == 1, res.stderr
        assert res.stderr.splitlines() == [
            f"… lock {path}, held by {who}: waiting (2 s so far; gives up after 3 s, locks.wait_s)",
            f"hpcft: error: {path}: held by {who} for more than 3 s; gave up. Ask {other.name}, or the cache admin, "
            "to end that process if it hangs, or raise locks.wait_s in the hpcft config to wait longer"]
        cache = hpcft_home / "cache"
        assert not list((cache / "manifests" / "model").iterdir()) and not list((cache / "tmp").iterdir())
        assert not (cache / "hf" / "hub" / "models--local--lm").exists()
    finally:
        holder.communicate(timeout=30)  # stdin closed: the holder lets go
    assert holder.returncode == 0 and path.read_text() == ""  # its record went with it
    res = run_hpcft("stage", str(tmp_path / "lm"), cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_holder_on_another_host_is_named_from_its_record_and_only_when_it_owns_the_file(
        other, tmp_path, monkeypatch):
    """On a shared filesystem a holder on another login node is not in this host's /proc/locks:
    the record it wrote into its own lock file names it. A record that does not match the file's
    owner, or that says this host (a stale one: the holder would be in /proc/locks), is not
    believed: then the file's owner is named."""
    from hpcft.core.errors import StageError
    from hpcft.core.safefs import Dir, Lock

    locks, path = _lock_file(tmp_path / "cache", other)
    monkeypatch.setattr(Lock, "flock_holders", staticmethod(lambda st, table=None: []))
    held = os.open(path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        for record, named in ((f"user={other.name} pid=77 host=login9\n", f"{other.name} (pid 77 on login9)"),
                              ("user=root pid=77 host=login9\n", f"{other.name} (pid unknown: the lock file's owner)"),
                              (f"user={other.name} pid=77 host={socket.gethostname()}\n",
                               f"{other.name} (pid unknown: the lock file's owner)"),
                              ("garbage", f"{other.name} (pid unknown: the lock file's owner)")):
            path.write_text(record)
            with Dir.open_root(locks) as folder, pytest.raises(StageError) as info:
                Lock(folder, path.name, timeout=0.3).__enter__()
            assert str(info.value).startswith(f"{path}: held by {named} for more than 0.3 s; gave up. "
                                              f"Ask {other.name}, or the cache admin,")
    finally:
        os.close(held)


def test_the_holders_are_read_from_proc_locks_without_its_waiters():
    from hpcft.core.safefs import Lock

    st = os.stat_result((0o100644, 1597472, os.makedev(254, 0), 1, 0, 0, 0, 0, 0, 0))
    table = ("1: POSIX  ADVISORY  WRITE 15341 fe:00:15343679 0 EOF\n"
             "2: FLOCK  ADVISORY  WRITE 4242 fe:00:1597472 0 EOF\n"
             "2: -> FLOCK  ADVISORY  WRITE 4343 fe:00:1597472 0 EOF\n"
             "3: FLOCK  ADVISORY  WRITE 5151 fe:01:1597472 0 EOF\n")
    assert Lock.flock_holders(st, table) == [4242]


@pytest.mark.parametrize("value, problem", [
    ("0", "Input should be greater than 0 (got 0)"),
    ("-5", "Input should be greater than 0 (got -5)"),
    ("soon", "Input should be a valid number (got 'soon')"),
    (".inf", "Input should be a finite number (got inf)"),
    ("true", "Input should be a valid number (got True)"),
])
def test_locks_wait_s_must_be_a_positive_number(hpcft_home, tmp_path, run_hpcft, value, problem):
    config = hpcft_home / "no-cluster-config.yaml"
    config.write_text(f"locks:\n  wait_s: {value}\n")
    res = run_hpcft("stage", str(tmp_path / "nothing"), cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"{config}:2: locks.wait_s: {problem}"]


# --------------------------------------------------------------------------- trusted_code: staged code you can check

JOB = ("name: t\nexecutor: local\ntrain:\n  model: bert-base-uncased\n  dataset: glue/mrpc\n"
       "  metric: evaluate-metric/glue\n  epochs: 1\n")


def _manifest_file(cache_root: Path, kind: str, repo_id: str) -> Path:
    from hpcft.core.store import Cache

    return Cache(cache_root).manifest_path(kind, repo_id)


def _as_staged_by(user, cache_root: Path, asset) -> None:
    """``asset`` (a StagedAsset) as ``user`` would have staged it (manifest and files theirs), and
    accepted by this user's `hpcft stage` check of it (core.foreign's memo), as a group member's
    copy of a metric the mirror vouched for is."""
    from hpcft.core import foreign

    for folder in (asset.path, *asset.path.parents[:2]):
        os.chown(folder, user.uid, user.gid)
    manifest = _manifest_file(cache_root, asset.kind, asset.repo_id)
    for f in [*asset.path.iterdir(), manifest]:
        os.chown(f, user.uid, user.gid)
    foreign.remember(asset.path, str(manifest))


@pytest.fixture
def metric(tmp_path, hpcft_home, other):
    """The GLUE metric staged into the cache by another group member; a job naming it; the
    config file the tests pin in."""
    from devtools.hub.fixtures import make_glue_metric
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    asset = register_local(Cache(hpcft_home / "cache"), "metric", "evaluate-metric/glue",
                           make_glue_metric(tmp_path / "space"), aliases=["glue"])
    _as_staged_by(other, hpcft_home / "cache", asset)
    (tmp_path / "job.yaml").write_text(JOB)
    script = asset.path / "glue.py"
    return script, hashlib.sha256(script.read_bytes()).hexdigest(), hpcft_home / "no-cluster-config.yaml"


def _trusted_lines(run_hpcft, tmp_path) -> list[str]:
    res = run_hpcft("check", str(tmp_path / "job.yaml"), cwd=tmp_path, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    return [ln for ln in res.stdout.splitlines() if " trusted code" in ln]


def test_an_unpinned_metric_script_is_refused_at_pre_flight_naming_its_sha256_owner_and_pin(
        metric, other, tmp_path, run_hpcft):
    from hpcft.core import foreign

    script, digest, config = metric
    assert _trusted_lines(run_hpcft, tmp_path) == []  # trusted_code not set: as before
    config.write_text("trusted_code:\n  evaluate-metric/other: []\n")
    assert _trusted_lines(run_hpcft, tmp_path) == [  # app.py (the Space's page) is not code that runs
        f"✗ trusted code: metric evaluate-metric/glue: {script} (sha256 {digest}, staged by {other.name}) is not "
        "pinned in trusted_code; read it, then the cluster admin pins it in the cluster config: "
        f"trusted_code: {{evaluate-metric/glue: [{digest}]}}"]
    config.write_text(f"trusted_code:\n  evaluate-metric/glue:\n    - {digest.upper()}\n")
    assert _trusted_lines(run_hpcft, tmp_path) == [
        "✓ trusted code: metric evaluate-metric/glue: its code is pinned in trusted_code"]
    (script.parent / "helper.py").write_text("import os\n")  # a module beside it would be imported too
    os.chown(script.parent / "helper.py", other.uid, other.gid)
    foreign.remember(script.parent, str(_manifest_file(script.parents[4], "metric", "evaluate-metric/glue")))
    lines = _trusted_lines(run_hpcft, tmp_path)
    assert len(lines) == 1 and lines[0].startswith(f"✗ trusted code: metric evaluate-metric/glue: "
                                                   f"{script.parent / 'helper.py'} (sha256 ")


def test_the_worker_loads_only_the_bytes_it_checked(metric, tmp_path, monkeypatch):
    """Right before evaluate.load: an unpinned script is refused; a pinned one is read once and
    a private copy of exactly those bytes is what gets loaded, so a script swapped after the
    check (a race between check and open) never runs."""
    from hpcft.core.trusted_code import UntrustedCode, checked_copy, refusals

    script, digest, _ = metric
    cache = script.parents[4]
    with pytest.raises(UntrustedCode) as info:
        checked_copy(script, cache, {"evaluate-metric/glue": ["0" * 64]}, tmp_path / "none")
    assert info.value.lines() == refusals(script, cache, {"evaluate-metric/glue": ["0" * 64]})
    assert len(info.value.lines()) == 1 and f"sha256 {digest}" in info.value.lines()[0]
    assert not (tmp_path / "none").exists()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    real = script.read_bytes()
    loaded = checked_copy(script, cache, {"evaluate-metric/glue": [digest]}, private)
    script.write_text("raise SystemExit('swapped after the check')\n")  # the race
    assert loaded == private / "glue" / "glue.py" and loaded.read_bytes() == real
    assert sorted(p.name for p in loaded.parent.iterdir()) == ["glue.py"]
    # trusted_code not set, or a metric that is a local path: loaded where it is, as before
    assert checked_copy(script, cache, None, private) == script
    assert checked_copy(tmp_path / "space" / "glue.py", cache, {}, private) == tmp_path / "space" / "glue.py"


@pytest.mark.worker
def test_a_job_scores_with_its_pinned_metric_and_stops_before_an_unpinned_one(metric, hpcft_home, tmp_path):
    script, digest, config = metric
    code = ("import sys; from pathlib import Path; from hpcft.worker.engines.native.metrics import load_staged\n"
            "m = load_staged(Path(sys.argv[1]), 'mrpc'); print(m.compute(predictions=[0, 1], references=[0, 1]))\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    config.write_text(f"trusted_code:\n  evaluate-metric/glue: [{digest}]\n")
    ok = subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True, env=env,
                        timeout=300, cwd=ROOT)
    assert ok.returncode == 0 and "'accuracy': 1.0" in ok.stdout, ok.stderr[-3000:]
    config.write_text("trusted_code:\n  evaluate-metric/glue: []\n")
    refused = subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True, env=env,
                             timeout=300, cwd=ROOT)
    assert refused.returncode != 0
    assert f"UntrustedCode: metric evaluate-metric/glue: {script} (sha256 {digest}, staged by" in refused.stderr


def test_staged_scripts_lists_each_metric_and_model_script_for_the_admin_to_pin(metric, other, hpcft_home, tmp_path):
    from hpcft.core.config import load_settings
    from hpcft.core.store import Cache
    from hpcft.core.trusted_code import refusals
    from hpcft.stage.layout import register_local
    from hpcft.stage.trusted_code import pin_yaml, staged_scripts

    script, digest, config = metric
    model = tmp_path / "glm"
    model.mkdir()
    (model / "config.json").write_text('{"auto_map": {"AutoModel": "modeling_glm.GLMModel"}}')
    (model / "modeling_glm.py").write_text("class GLMModel: pass\n")
    cache = Cache(hpcft_home / "cache")
    staged = register_local(cache, "model", "org/glm", model)
    found = staged_scripts(cache)
    code = hashlib.sha256(b"class GLMModel: pass\n").hexdigest()
    assert [(s.kind, s.repo_id, s.path, s.owner, s.sha256, s.changed) for s in found] == [
        ("metric", "evaluate-metric/glue", script, other.name, digest, False),
        ("model", "org/glm", staged.path / "modeling_glm.py", "root", code, False)]
    block = pin_yaml(s for s in found if s.kind == "metric")
    assert block == f"trusted_code:\n  evaluate-metric/glue:\n    - {digest}  # glue.py, staged by {other.name}\n"
    config.write_text(block)  # what the admin pastes validates, and pins the script
    assert refusals(script, cache.root, load_settings().trusted_code) == []
    script.write_text("print('changed after staging')\n")
    assert [s.changed for s in staged_scripts(cache)] == [True, False]


@pytest.mark.parametrize("text, problem", [
    ("trusted_code:\n  evaluate-metric/glue: [abc]\n",
     ":2: trusted_code.evaluate-metric/glue[0]: 'abc' is not a sha256 (64 hex digits, as `hpcft cache doctor` "
     "prints them)"),
    ("trusted_code:\n  evaluate-metric/glue: 1\n", ":2: trusted_code.evaluate-metric/glue: Input should be a "
                                                  "valid list (got 1)"),
    ("trusted_code: [abc]\n", ":1: trusted_code: Input should be a valid dictionary (got ['abc'])"),
])
def test_a_bad_trusted_code_is_a_one_line_config_error(hpcft_home, tmp_path, run_hpcft, text, problem):
    config = hpcft_home / "no-cluster-config.yaml"
    config.write_text(text)
    (tmp_path / "job.yaml").write_text(JOB)
    res = run_hpcft("check", str(tmp_path / "job.yaml"), cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and res.stderr.splitlines() == [f"{config}{problem}"]
