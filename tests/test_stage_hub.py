"""hpcft stage against the loopback hub: selection, layout, faults, concurrency, permissions.

Staging runs in-process where nothing is read at import time (hpcft's downloader takes
the endpoint as an argument) and as the real CLI in subprocesses where processes matter
(concurrency, Ctrl-C, umask). The offline loads run the real transformers / datasets /
evaluate in a fresh process with the hub stopped (tests/test_stage_offline.py).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.hub.pytest_fixtures import hub, hub_fixtures, hub_server  # noqa: F401
from devtools.wait import WaitTimeout, wait_for
from hpcft.core.config import load_settings
from hpcft.core.errors import StageError
from hpcft.core.resolve import load_table, plan
from hpcft.core.store import Cache
from hpcft.stage import stage as stage_mod
from hpcft.stage.stage import StageOptions, stage

pytestmark = pytest.mark.hub

BERT = "google-bert/bert-base-uncased"
GLUE = "nyu-mll/glue"
NEEDED = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
          "special_tokens_map.json"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(hub, monkeypatch, hpcft_home):  # noqa: F811
    for k in list(os.environ):
        if k.startswith(("HF_", "MODELSCOPE_", "HUGGINGFACE_")) or k.lower().endswith("_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
    monkeypatch.setenv("HPCFT_RETRY_BACKOFF_S", "0.05")
    return hub


def config(home: Path, text: str) -> None:
    """The user config (conftest points XDG_CONFIG_HOME into the test's home)."""
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "hpcft" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(models=(), datasets=(), metrics=(), **opts):
    s = load_settings()
    table = load_table(s)
    refs = plan(list(models), list(datasets), list(metrics), table, with_metrics=opts.pop("with_metrics", True))
    return stage(refs, s, s.cache, table, StageOptions(quiet=True, **opts))


def cli(*args, env_extra=None, timeout=60, umask=None):
    cmd = [sys.executable, "-m", "hpcft.cli.main", *args]
    env = {**os.environ, **(env_extra or {})}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, preexec_fn=pre)


def cache() -> Cache:
    return Cache(Path(os.environ["HPCFT_CACHE"]))


def no_manifests() -> bool:
    return not list((cache().root / "manifests").rglob("*.json"))


# ---------------------------------------------------------------------------- happy paths
@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_model_fetches_only_needed_files(env, source):
    [res] = run(["bert-base-uncased"], source=source)
    assert res.status == "staged" and res.source == source
    assert env.log.fetched_files(BERT) == NEEDED
    assert {s["path"] for s in res.skipped} == {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
                                                 "model.onnx", "rust_model.ot", "coreml/model.mlmodel",
                                                 "README.md", ".gitattributes"}
    asset = cache().find("model", "bert-base-uncased")
    m = asset.manifest
    assert m["repo_id"] == BERT and m["source"] == source and m["endpoint"] == env.url
    assert m["sha"] == env.repos[("model", BERT)].default.sha and m["hpcft_version"] and m["staged_at"]
    served = env.repos[("model", BERT)].files
    assert {f["path"]: (f["size"], f["sha256"]) for f in m["files"]} == \
        {p: (served[p].size, served[p].sha256) for p in NEEDED}
    hub_dir = cache().root / "hf" / "hub"
    assert (hub_dir / "models--google-bert--bert-base-uncased" / "refs" / "main").read_text() == m["sha"]
    assert os.readlink(hub_dir / "models--bert-base-uncased") == "models--google-bert--bert-base-uncased"
    assert not list(cache().tmp.iterdir())
    # a second stage is a no-op: nothing fetched, not even a listing
    env.log.clear()
    [again] = run(["bert-base-uncased"], source=source)
    assert again.status == "cached" and len(env.log) == 0


def test_only_the_requested_glue_config_and_its_metric(env):
    res = run(datasets=["glue/mrpc"])
    assert [(r.kind, r.repo_id, r.config) for r in res] == [("dataset", GLUE, "mrpc"),
                                                            ("metric", "evaluate-metric/glue", None)]
    assert env.log.fetched_files(GLUE) == {"README.md", "mrpc/train-00000-of-00001.parquet",
                                           "mrpc/validation-00000-of-00001.parquet",
                                           "mrpc/test-00000-of-00001.parquet"}
    assert env.log.fetched_files("evaluate-metric/glue") == {"glue.py", "README.md", "requirements.txt"}
    # a second config lands in the same snapshot, fetching only its own files
    env.log.clear()
    run(datasets=["glue/cola"], with_metrics=False)
    assert env.log.fetched_files(GLUE) == {"README.md", "cola/train-00000-of-00001.parquet",
                                           "cola/validation-00000-of-00001.parquet",
                                           "cola/test-00000-of-00001.parquet"}
    mrpc, cola = cache().find("dataset", "glue", "mrpc"), cache().find("dataset", "glue/cola")
    assert mrpc.path == cola.path and (mrpc.path / "mrpc").is_dir() and (cola.path / "cola").is_dir()
    metric = cache().find("metric", "glue")
    assert metric.path.name == "glue" and (metric.path / "glue.py").is_file()
    # nothing that a job imports from a module cache is shared: evaluate copies the staged script
    # into each user's own HF_MODULES_CACHE (tests/test_stage_offline.py)
    assert not (cache().root / "hf" / "modules").exists()


def test_cli_json_summary_and_ls(env, run_hpcft):
    proc = run_hpcft("stage", "bert-base-cased", "yelp_review_full", "--json", "--source", "hf")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [a["repo_id"] for a in out["assets"]] == ["google-bert/bert-base-cased", "Yelp/yelp_review_full"]
    assert out["saved_bytes"] > 1_000_000 and out["fetched_bytes"] > 200_000
    ls = json.loads(run_hpcft("cache", "ls", "--json").stdout)
    names = {a["name"]: a for a in ls["assets"]}
    assert names["google-bert/bert-base-cased"]["aliases"] == ["bert-base-cased"]
    assert names["Yelp/yelp_review_full"]["sha"] and names["Yelp/yelp_review_full"]["size"] > 0
    table = run_hpcft("cache", "ls").stdout
    assert "bert-base-cased" in table and "yelp_review_full" in table


def test_stage_job_file(env, run_hpcft, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ntrain:\n  model: bert-base-uncased\n  dataset: glue\n  dataset_config: rte\n"
                   "  metric: glue\n")
    env.repos[("dataset", GLUE)]  # rte is not in the fixture: the error lists what is
    proc = run_hpcft("stage", "--job", str(job), "--source", "hf")
    assert proc.returncode == 1
    assert "unknown config 'rte'" in proc.stderr and "cola, mrpc, sst2" in proc.stderr
    job.write_text(job.read_text().replace("rte", "mrpc"))
    proc = run_hpcft("stage", "--job", str(job), "--source", "hf")
    assert proc.returncode == 0, proc.stderr
    assert cache().find("dataset", "glue", "mrpc") and cache().find("metric", "glue")


def test_auto_falls_back_and_reports(env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    [res] = run(["bert-base-cased"])
    assert res.source == "modelscope"
    assert res.tried and "hf (http://127.0.0.1:9): cannot reach" in res.tried[0]


# ---------------------------------------------------------------------------- faults
def test_retry_after_5xx(env):
    env.faults.fail("*/config.json", times=2)
    env.faults.fail("/api/models/*", times=1)
    [res] = run(["bert-base-uncased"], source="hf")
    assert res.status == "staged"
    assert len([e for e in env.log if e.file == "config.json" and e.status == 500]) == 2


def test_resume_after_dropped_connection(env):
    size = env.repos[("model", BERT)].files["model.safetensors"].size
    env.faults.drop("*/model.safetensors", after_bytes=100_000)
    run(["bert-base-uncased"], source="hf")
    gets = [e for e in env.log.downloads(BERT) if e.file == "model.safetensors"]
    assert [e.bytes_sent for e in gets] == [100_000, size - 100_000]
    assert gets[1].range == "bytes=100000-"
    assert cache().find("model", BERT)


def test_corrupt_file_is_rejected_and_nothing_staged(env):
    env.faults.corrupt("*/vocab.txt")  # not LFS: checked against the git blob id
    with pytest.raises(StageError) as exc:
        run(["bert-base-uncased"], source="hf")
    assert "vocab.txt" in str(exc.value) and "checksum mismatch" in str(exc.value)
    assert no_manifests() and not (cache().root / "hf/hub/models--google-bert--bert-base-uncased").exists()


def test_missing_file(env):
    env.faults.missing("*/tokenizer.json", listed=True)
    with pytest.raises(StageError, match="tokenizer.json: HTTP 404"):
        run(["bert-base-uncased"], source="hf")
    assert no_manifests()


@pytest.mark.parametrize("typed,expect", [
    ("google-bert/no-such-model", ["hf (", "modelscope (", "not found", "check the name"]),
])
def test_unknown_model_names_every_source(env, run_hpcft, typed, expect):
    proc = run_hpcft("stage", typed)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("hpcft: error: model google-bert/no-such-model")
    for e in expect:
        assert e in err


def test_unknown_revision(env, run_hpcft):
    proc = run_hpcft("stage", "bert-base-uncased", "--revision", "v9", "--source", "hf")
    assert proc.returncode == 1 and "revision not found" in proc.stderr and "--revision" in proc.stderr


def test_unreachable_endpoint_fails_fast_naming_the_variable(env, run_hpcft, hpcft_home):
    refused = run_hpcft("stage", "bert-base-uncased", "--source", "hf",
                        env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert refused.returncode == 1
    assert "http://127.0.0.1:9" in refused.stderr and "HF_ENDPOINT" in refused.stderr \
        and "sources.hf_endpoint" in refused.stderr
    # a black hole: accepts connections, never answers
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        config(hpcft_home, "sources:\n  timeout_s: 4\n")
        hole_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        t0 = time.monotonic()  # --source auto, both sources black holes: still within timeout_s
        hole = run_hpcft("stage", "bert-base-uncased", env={"MODELSCOPE_ENDPOINT": hole_url, "HF_ENDPOINT": hole_url})
        took = time.monotonic() - t0
    finally:
        sock.close()
    assert hole.returncode == 1 and took < 4 + 3, took
    assert "HF_ENDPOINT" in hole.stderr and "sources.hf_endpoint" in hole.stderr
    assert "MODELSCOPE_ENDPOINT" in hole.stderr and "cannot reach" in hole.stderr


def test_disk_full_removes_temp_files(env, monkeypatch):
    real = stage_mod.download

    def full(url, part, **kw):
        if part.rel == "model.safetensors.part":  # a PartFile: written through the staging folder's descriptor
            with part.open_append() as fh:
                fh.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(url, part, **kw)

    monkeypatch.setattr(stage_mod, "download", full)
    with pytest.raises(StageError, match="disk full"):
        run(["bert-base-uncased"], source="hf")
    assert no_manifests() and not list(cache().tmp.iterdir())


def test_cache_dir_not_writable(env, tmp_path, run_hpcft):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_hpcft("stage", "bert-base-uncased", "--cache", str(blocker / "cache"))
    assert proc.returncode == 1 and "is not writable" in proc.stderr and "--cache" in proc.stderr


def test_bad_names_are_one_line_errors(env, run_hpcft):
    for args, want in ((["glue/mrcp"], "unknown config 'mrcp'"), (["m", "glue"], "glue needs a config"),
                       ([], "nothing to stage")):
        proc = run_hpcft("stage", *args)
        assert proc.returncode != 0 and want in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- processes
def test_two_concurrent_stages_download_once(env):
    env.faults.slow("*/model.safetensors", bytes_per_sec=400_000)
    procs = [subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", "stage", "bert-base-uncased", "--source",
                               "hf"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    gets = [e for e in env.log.downloads(BERT) if e.file == "model.safetensors"]
    assert len(gets) == 1
    assert sum("another process" in err or "already staged" in err for _, err in outs) == 1


def test_ctrl_c_leaves_a_resumable_state(env):
    size = env.repos[("model", BERT)].files["model.safetensors"].size
    env.faults.slow("*/model.safetensors", bytes_per_sec=50_000, times=1)
    p = subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", "stage", "bert-base-uncased", "--source", "hf"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # a part file renamed between rglob and stat is "not yet"
        parts = wait_for(lambda: [q for q in cache().tmp.rglob("model.safetensors.part") if q.stat().st_size > 20_000],
                         timeout=20, interval=0.05, retry_on=(FileNotFoundError,),
                         what="a partial download of model.safetensors over 20 kB in the cache's tmp",
                         describe=lambda _: "no such partial download")
    except WaitTimeout:
        p.kill()
        raise
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130 and "resume" in err
    assert no_manifests()
    have = parts[0].stat().st_size
    env.log.clear()
    [res] = run(["bert-base-uncased"], source="hf")
    [get] = [e for e in env.log.downloads(BERT) if e.file == "model.safetensors"]
    assert get.range == f"bytes={have}-" and get.bytes_sent == size - have and res.status == "staged"


def test_cache_verify_catches_a_flipped_byte_and_rm(env, run_hpcft):
    run(["bert-base-uncased"], datasets=["glue/mrpc"], source="hf")
    assert run_hpcft("cache", "verify").returncode == 0
    target = cache().find("model", "bert-base-uncased").path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    proc = run_hpcft("cache", "verify")
    assert proc.returncode == 1 and "model.safetensors: sha256 differs" in proc.stderr
    assert run_hpcft("cache", "verify", "glue/mrpc").returncode == 0
    # rm needs --kind when a name is both a dataset and a metric
    amb = run_hpcft("cache", "rm", "glue")
    assert amb.returncode == 2 and "--kind" in amb.stderr
    assert run_hpcft("cache", "rm", "bert-base-uncased").returncode == 0
    assert cache().find("model", "bert-base-uncased") is None
    assert not (cache().root / "hf/hub/models--bert-base-uncased").is_symlink()
    assert run_hpcft("cache", "rm", "glue", "--kind", "metric").returncode == 0
    assert cache().find("dataset", "glue", "mrpc") is not None
    assert run_hpcft("cache", "verify", "nope").returncode == 1


def _modes(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            if not p.is_symlink():
                yield p, os.lstat(p)


def test_permissions_under_umask_077(env):
    proc = cli("stage", "bert-base-uncased", "glue/mrpc", "--source", "hf", umask=0o077)
    assert proc.returncode == 0, proc.stderr
    for p, st in _modes(cache().root):
        assert not st.st_mode & stat.S_IWOTH, p
        if p.parent.name == "locks":
            continue
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) & 0o755 == 0o755, p
        else:
            assert stat.S_IMODE(st.st_mode) & 0o644 == 0o644, p


def test_cache_group_gives_setgid_group_dirs(env, hpcft_home):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    config(hpcft_home, f"cache_group: {group}\n")
    proc = cli("stage", "bert-base-uncased", "--source", "hf", umask=0o077)
    assert proc.returncode == 0, proc.stderr
    snap = cache().find("model", "bert-base-uncased").path
    # shared folders: setgid + sticky (the group adds entries, only an entry's owner renames or removes it)
    for p in (snap.parent, cache().root / "manifests" / "model", cache().root / "hf" / "hub", cache().tmp):
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o3775 and st.st_gid == os.getgid(), (p, oct(st.st_mode))
    # a staged asset: the group reads, only the stager writes (nobody can add a file to it either)
    assert stat.S_IMODE(os.stat(snap).st_mode) == 0o2755
    assert stat.S_IMODE(os.stat(snap / "model.safetensors").st_mode) == 0o644
    assert not (cache().root / "hf" / "datasets").exists()  # run-time caches are each user's own
    config(hpcft_home, "cache_group: no-such-group-hpcft\n")
    bad = cli("stage", "bert-base-cased", "--source", "hf")
    assert bad.returncode == 1 and "cache_group 'no-such-group-hpcft'" in bad.stderr


def test_stage_cli_imports_no_client_library(env):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpcft.cli.main", "stage", "bert-base-uncased",
                           "--source", "hf", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = {m for m in mods if m.split(".")[0] in {"torch", "transformers", "datasets", "evaluate", "modelscope",
                                                     "huggingface_hub", "deepspeed"}}
    assert not heavy


def test_progress_plain_lines_when_not_a_terminal(env):
    env.faults.slow("*/model.safetensors", bytes_per_sec=300_000)
    proc = cli("stage", "bert-base-uncased", "--source", "hf", env_extra={"HPCFT_PROGRESS_INTERVAL": "0.2"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "files," in line and "/s" in line]
    assert lines and "\x1b[" not in proc.stderr  # periodic plain lines, no cursor movement
    assert "staged 1 asset(s)" in proc.stderr and "skipped 1.5 MB" in proc.stderr


def test_progress_bars_on_a_terminal():
    import io

    from hpcft.stage.progress import Progress

    out = io.StringIO()
    with Progress("model x", 1000, 2, stream=out, tty=True, interval=0.01) as p:
        p.file_started("a.bin", 600)
        p.add("a.bin", 300)
        time.sleep(0.05)
    text = out.getvalue()
    assert "█" in text and "a.bin" in text and "50.0%" in text and "\x1b[" in text


def test_revision_tag_is_resolved_and_recorded(env, hub_fixtures):  # noqa: F811
    env.add_repo("model", "test/tagged", hub_fixtures[("model", BERT)], revisions={"v1.0": None})
    try:
        [res] = run(["test/tagged"], source="hf", revision="v1.0")
        m = cache().find("model", "test/tagged").manifest
        assert m["revision"] == "v1.0" and m["sha"] == res.sha
        assert (cache().root / "hf/hub/models--test--tagged/refs/v1.0").read_text() == res.sha
        [again] = run(["test/tagged"], source="hf", revision=res.sha[:10])
        assert again.status == "cached"
    finally:
        env.remove_repo("model", "test/tagged")


def test_local_folders_are_registered(env, tmp_path, hub_fixtures, monkeypatch):  # noqa: F811
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(hub_fixtures[("space", "evaluate-metric/glue")], tmp_path / "glue")
    shutil.copytree(hub_fixtures[("model", BERT)], tmp_path / "mybert")
    res = run(["./mybert"], metrics=["./glue"])
    assert [r.status for r in res] == ["local", "local"]
    assert cache().find("model", "./mybert").path.joinpath("config.json").is_file()
    assert cache().find("metric", "./glue").path.joinpath("glue.py").is_file()
    assert len(env.log) == 0
