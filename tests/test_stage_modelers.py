"""hpcft stage --source modelers (the openMind hub, modelers.cn) against the loopback hub.

The openMind CoLA tutorial's assets, PyTorch-NPU/bert_base_cased and AI_Connect/glue (cola),
staged with hpcft's own downloader: only what is needed, verified against the listed etags,
resumable, in the same manifested cache as HF-staged assets. The fake Modelers API is checked
against the real ``openmind_hub`` client in tests/test_modelers_client.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devtools.hub.pytest_fixtures import hub, hub_fixtures, hub_server, modelers_fixtures  # noqa: F401
from hpcft.core.config import load_settings
from hpcft.core.errors import StageError
from hpcft.core.resolve import load_table, plan
from hpcft.core.store import Cache
from hpcft.stage.stage import StageOptions, stage

pytestmark = pytest.mark.hub

BERT = "PyTorch-NPU/bert_base_cased"
GLUE = "AI_Connect/glue"
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"}
COLA_FILES = {"README.md", "cola/train-00000-of-00001.parquet", "cola/validation-00000-of-00001.parquet",
              "cola/test-00000-of-00001.parquet"}


@pytest.fixture
def env(hub, monkeypatch, hpcft_home):  # noqa: F811
    for k in list(os.environ):
        if k.startswith(("HF_", "MODELSCOPE_", "HUGGINGFACE_", "OPENMIND_")) or k.lower().endswith("_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("OPENMIND_HUB_ENDPOINT", hub.url)
    monkeypatch.setenv("HPCFT_RETRY_BACKOFF_S", "0.05")
    return hub


def run(models=(), datasets=(), metrics=(), **opts):
    s = load_settings()
    table = load_table(s)
    refs = plan(list(models), list(datasets), list(metrics), table)
    return stage(refs, s, s.cache, table, StageOptions(quiet=True, source=opts.pop("source", "modelers"), **opts))


def cache() -> Cache:
    return Cache(Path(os.environ["HPCFT_CACHE"]))


def test_tutorial_ids_stage_as_written_fetching_only_what_is_needed(env, run_hpcft):
    res = run([BERT], [f"{GLUE}:cola"])
    assert [r.status for r in res] == ["staged", "staged"]
    assert env.log.fetched_files(BERT) == MODEL_FILES  # no .bin, .ckpt, TF/Flax/ONNX/CoreML, README
    assert env.log.fetched_files(GLUE) == COLA_FILES  # no mrpc/, sst2/, glue.py
    assert {e.protocol for e in env.log if e.repo_id in (BERT, GLUE)} == {"om"}
    model = cache().find("model", BERT)
    data = cache().find("dataset", GLUE, "cola")
    for asset, repo, kind in ((model, BERT, "model"), (data, GLUE, "dataset")):
        m = asset.manifest
        assert m["source"] == "modelers" and m["endpoint"] == env.url and m["revision"] == "main"
        assert m["sha"] == env.repos[(kind, repo)].default.sha
        # the HF hub layout, so the worker and openmind_hub (a run's xdg/openmind/hub -> hf/hub) find it
        root = cache().root / "hf" / "hub" / f"{kind}s--{repo.replace('/', '--')}"
        assert asset.path == root / "snapshots" / m["sha"]
        assert (root / "refs" / "main").read_text() == m["sha"]
    assert {f["path"] for f in model.manifest["files"]} == MODEL_FILES
    ls = run_hpcft("cache", "ls", check=True).stdout
    assert any(line.split()[1] == BERT and "modelers" in line.split() for line in ls.splitlines()[1:]), ls
    rows = json.loads(run_hpcft("cache", "ls", "--json", check=True).stdout)["assets"]
    assert {(r["name"], r["source"]) for r in rows} == {(BERT, "modelers"), (f"{GLUE}:cola", "modelers")}


def test_alias_entries_name_the_modelers_repo(env):
    """bert-base-cased / glue say `modelers:` in aliases.yaml; the metric still comes from HF."""
    res = run(["bert-base-cased"], ["glue/cola"])
    assert [(r.kind, r.repo_id, r.source) for r in res] == [
        ("model", "google-bert/bert-base-cased", "modelers"), ("dataset", "nyu-mll/glue", "modelers"),
        ("metric", "evaluate-metric/glue", "hf")]
    assert env.log.fetched_files(BERT) == MODEL_FILES and env.log.fetched_files(GLUE) == COLA_FILES
    assert env.log.fetched_files("google-bert/bert-base-cased") == set()
    hub_dir = cache().root / "hf" / "hub"
    # openmind_hub looks repos up by the Modelers id: a link to the staged copy
    assert os.readlink(hub_dir / "models--PyTorch-NPU--bert_base_cased") == "models--google-bert--bert-base-cased"
    assert os.readlink(hub_dir / "datasets--AI_Connect--glue") == "datasets--nyu-mll--glue"
    assert cache().find("model", BERT).repo_id == "google-bert/bert-base-cased"


def test_config_order_with_modelers_first_falls_back(env, run_hpcft, monkeypatch):
    Path(os.environ["HPCFT_CONFIG"]).write_text(json.dumps(
        {"sources": {"order": ["modelers", "hf"], "modelers_endpoint": "http://127.0.0.1:9", "retries": 0}}))
    monkeypatch.delenv("OPENMIND_HUB_ENDPOINT")
    out = json.loads(run_hpcft("stage", BERT, "--json", check=True).stdout)["assets"][0]
    assert out["source"] == "hf"  # the config's Modelers endpoint is dead: the next source answers
    assert any(t.startswith("modelers (http://127.0.0.1:9): cannot reach") for t in out["tried"]), out["tried"]
    run_hpcft("cache", "rm", BERT, check=True)
    monkeypatch.setenv("OPENMIND_HUB_ENDPOINT", env.url)  # the variable wins over the config
    out = json.loads(run_hpcft("stage", BERT, "--json", check=True).stdout)["assets"][0]
    assert out["source"] == "modelers" and out["endpoint"] == env.url and out["tried"] == []


def test_a_cut_download_resumes(env):
    size = env.repos[("model", BERT)].files["model.safetensors"].size
    env.faults.drop(f"{BERT}/model.safetensors", after_bytes=100_000)
    [res] = run([BERT])
    gets = [e for e in env.log.downloads(BERT) if e.file == "model.safetensors"]
    assert [e.bytes_sent for e in gets] == [100_000, size - 100_000]
    assert gets[1].range == "bytes=100000-" and res.status == "staged"


@pytest.mark.parametrize("path", ["model.safetensors", "vocab.txt"])  # LFS sha256 / git blob id
def test_corrupt_bytes_are_rejected_and_nothing_staged(env, path):
    env.faults.corrupt(f"{BERT}/{path}")
    with pytest.raises(StageError) as exc:
        run([BERT])
    assert path in str(exc.value) and "checksum mismatch" in str(exc.value)
    assert cache().find("model", BERT) is None
    assert not (cache().root / "hf/hub/models--PyTorch-NPU--bert_base_cased").exists()


def test_cache_verify_catches_a_flipped_byte(env, run_hpcft):
    run([BERT], [f"{GLUE}:cola"])
    assert run_hpcft("cache", "verify").returncode == 0
    target = cache().find("dataset", GLUE, "cola").path / "cola/train-00000-of-00001.parquet"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    proc = run_hpcft("cache", "verify")
    assert proc.returncode == 1 and "cola/train-00000-of-00001.parquet: sha256 differs" in proc.stderr
    assert run_hpcft("cache", "verify", BERT).returncode == 0


def test_unknown_config_lists_the_available_ones(env, run_hpcft):
    proc = run_hpcft("stage", f"{GLUE}:nope", "--source", "modelers")
    assert proc.returncode != 0
    assert "unknown config 'nope'; available: cola, mrpc, sst2" in proc.stderr
    assert not list((cache().root / "manifests").rglob("*.json"))


@pytest.mark.parametrize("typed,kind,expect", [
    ("PyTorch-NPU/no-such-model", "model", "not found (HTTP 404, repo_not_exist"),
    (GLUE, "model", "not found (HTTP 404, repo_not_exist"),      # a dataset asked for as a model
    ("bert_base_cased", "model", "Modelers ids have the form owner/name"),
])
def test_bad_ids_are_one_clear_line(env, run_hpcft, typed, kind, expect):
    proc = run_hpcft("stage", "--model", typed, "--source", "modelers")
    assert proc.returncode != 0 and expect in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_revision(env, run_hpcft):
    proc = run_hpcft("stage", BERT, "--source", "modelers", "--revision", "v9")
    assert proc.returncode != 0 and "revision not found" in proc.stderr and "--revision" in proc.stderr


def test_token_is_sent_and_never_written(env, run_hpcft, tmp_path, hpcft_home):
    secret = "om-secret-token-8d1f"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    Path(os.environ["HPCFT_CONFIG"]).write_text(json.dumps({"sources": {"modelers_token_file": str(token_file)}}))
    proc = run_hpcft("stage", BERT, f"{GLUE}:cola", "--source", "modelers", "--json", check=True)
    om = [e for e in env.log if e.protocol == "om"]
    assert om and all(e.auth == f"Bearer {secret}" for e in om)
    assert all(e.auth is None for e in env.log if e.protocol != "om")
    assert secret not in proc.stdout + proc.stderr
    for p in cache().root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert secret.encode() not in p.read_bytes(), p
    env.log.clear()  # the variable wins over the file
    run_hpcft("cache", "rm", BERT, check=True)
    run_hpcft("stage", BERT, "--source", "modelers", env={"OPENMIND_HUB_TOKEN": "from-env"}, check=True)
    assert {e.auth for e in env.log if e.protocol == "om"} == {"Bearer from-env"}
    token_file.unlink()
    bad = run_hpcft("stage", "PyTorch-NPU/other", "--source", "modelers")
    assert bad.returncode != 0 and "modelers_token_file" in bad.stderr and secret not in bad.stderr


def test_stage_cli_imports_no_hub_client(env, run_hpcft):
    code = ("import sys, runpy; sys.argv=['hpcft','stage','PyTorch-NPU/bert_base_cased','--source','modelers','-q'];"
            "import hpcft.cli.main as m\ntry:\n m.main()\nexcept SystemExit:\n pass\n"
            "bad=[n for n in ('openmind_hub','openmind','torch','transformers','datasets','requests') if n in sys.modules]\n"
            "print('LOADED', bad)")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr
    assert cache().find("model", BERT) is not None


LOAD = """
import sys, datasets
dd = datasets.load_dataset(sys.argv[1], sys.argv[2])
print("SPLITS", sorted(dd), dd["train"].num_rows, dd["train"].column_names)
"""


def _load(folder, config):
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HPCFT_SHIM": "0"}
    return subprocess.run([sys.executable, "-c", LOAD, str(folder), config], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_staged_config_that_is_not_the_cards_first_loads(env, run_hpcft):
    """datasets picks its builder from the card's first config (mrpc): staging cola alone used to leave
    an unloadable folder. A .huggingface.yaml names the staged configs; the card stays as served."""
    run([], [f"{GLUE}:cola"])
    folder = cache().find("dataset", GLUE, "cola").path
    card = (folder / ".huggingface.yaml").read_text()
    assert "config_name: cola" in card and "mrpc" not in card
    proc = _load(folder, "cola")
    assert proc.returncode == 0 and "SPLITS ['test', 'train', 'validation'] 512" in proc.stdout, proc.stderr[-2000:]
    run([], [f"{GLUE}:mrpc"])  # a second config into the same snapshot: both listed, in the card's order
    card = (folder / ".huggingface.yaml").read_text()
    assert card.index("config_name: mrpc") < card.index("config_name: cola") and "sst2" not in card
    assert run_hpcft("cache", "verify").returncode == 0  # README.md is byte-identical to the hub's
    run_hpcft("cache", "rm", f"{GLUE}:mrpc", check=True)
    assert "mrpc" not in (folder / ".huggingface.yaml").read_text()
    assert _load(folder, "cola").returncode == 0


def test_a_modelers_id_asked_of_the_default_sources_suggests_modelers(env, run_hpcft, hpcft_home):
    Path(os.environ["HPCFT_CONFIG"]).write_text(json.dumps({"sources": {"order": ["hf"], "retries": 0}}))
    proc = run_hpcft("stage", "PyTorch-NPU/not-on-hf")
    assert proc.returncode != 0 and "add --source modelers" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
