"""Bounded pre-flight and code you can check (issue 26, findings 7 and 8): what another group
member wrote (a model's chat template, a lock file, a staged metric script) cannot hang
``hpcft check``/``stage`` or run unpinned code, and each refusal is one line naming the owner."""

from __future__ import annotations

import fcntl
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
    assert tok.apply_chat_template(long) == f"<|im_start|>user\n{'a' * 5000}<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
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
