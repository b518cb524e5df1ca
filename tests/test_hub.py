"""The loopback hub (devtools/hub) against the REAL client libraries, and its fault knobs.

Real clients run in subprocesses: huggingface_hub, datasets and evaluate read
HF_ENDPOINT / *_OFFLINE at import time.  Protocol details and fault knobs are
checked in-process with urllib, which is faster and shows the raw HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import time
import urllib.error
import urllib.request

import pytest

from devtools.hub.pytest_fixtures import client_env, hub, hub_fixtures, hub_server, run_client  # noqa: F401

pytestmark = pytest.mark.hub

BERT = "google-bert/bert-base-uncased"
GLUE = "nyu-mll/glue"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def req(hub, path, method="GET", headers=None, data=None):
    """(status, headers, body) of one request; no redirects followed, errors returned."""
    conn = http.client.HTTPConnection(hub.host, hub.port, timeout=30)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        try:
            body = r.read()
        except http.client.IncompleteRead as e:
            body = e.partial
        return r.status, r.headers, body
    finally:
        conn.close()


# ---------------------------------------------------------------------------- HF clients
def test_hf_snapshot_model_allow_patterns_then_nothing_to_fetch(hub, hub_fixtures, tmp_path):
    env = client_env(hub, tmp_path)
    code = ("from huggingface_hub import snapshot_download; import json, os\n"
            f"p = snapshot_download({BERT!r}, allow_patterns=['*.json', '*.safetensors', 'vocab.txt'])\n"
            "print(json.dumps(sorted(os.listdir(p))))")
    out = run_client(code, env).stdout
    want = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt"}
    assert set(json.loads(out.strip().splitlines()[-1])) == want
    assert hub.log.fetched_files(BERT) == want  # no .bin/.h5/.onnx/... bytes left the hub
    sizes = {p: (hub_fixtures[("model", BERT)] / p).stat().st_size for p in want}
    assert {p: n for (r, p), n in hub.log.bytes_by_file().items()} == sizes

    hub.log.clear()
    run_client(code, env)  # second stage: the cache is complete
    assert hub.log.bytes_served() == 0 and not hub.log.select("GET", f"/{BERT}/resolve/*")


def test_hf_snapshot_dataset_pages_the_tree(hub, hub_fixtures, tmp_path):
    hub.tree_page_size = 4  # 13 entries -> 4 pages, followed via Link: rel="next"
    code = ("from huggingface_hub import snapshot_download; import os, hashlib\n"
            f"p = snapshot_download({GLUE!r}, repo_type='dataset')\n"
            "for root, _, files in os.walk(p):\n"
            "    for f in files:\n"
            "        full = os.path.join(root, f)\n"
            "        print(os.path.relpath(full, p), hashlib.sha256(open(full, 'rb').read()).hexdigest())")
    out = run_client(code, client_env(hub, tmp_path)).stdout
    got = dict(line.split() for line in out.strip().splitlines())
    folder = hub_fixtures[("dataset", GLUE)]
    want = {p.relative_to(folder).as_posix(): sha256(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert got == want and "mrpc/train-00000-of-00001.parquet" in got
    pages = hub.log.select("GET", "/api/datasets/nyu-mll/glue/tree/*")
    assert len(pages) == 4 and sum("cursor=" in e.path for e in pages) == 3


def test_transformers_from_pretrained_online(hub, tmp_path):
    code = ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            f"m = AutoModelForSequenceClassification.from_pretrained({BERT!r}, num_labels=2)\n"
            f"t = AutoTokenizer.from_pretrained({BERT!r})\n"
            "print(type(m).__name__, m.config.num_labels, t('the film was great')['input_ids'])")
    out = run_client(code, client_env(hub, tmp_path)).stdout
    assert "BertForSequenceClassification 2" in out and "[2, " in out  # [CLS] = id 2
    fetched = hub.log.fetched_files(BERT)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched
    assert not fetched & {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.onnx"}
    # Optional files are probed; EntryNotFound + X-Repo-Commit lets the client move on.
    probes = [e for e in hub.log if e.status == 404 and e.file]
    assert probes and all(e.method == "HEAD" for e in probes)


def test_load_dataset_online_then_offline(hub, tmp_path):
    code = ("import datasets\n"
            f"ds = datasets.load_dataset({GLUE!r}, 'mrpc')\n"
            "print({k: v.num_rows for k, v in ds.items()}, ds['train'].features['label'].names)")
    out = run_client(code, client_env(hub, tmp_path)).stdout
    assert "{'train': 512, 'validation': 128, 'test': 64} ['not_equivalent', 'equivalent']" in out
    assert hub.log.fetched_files(GLUE) == {"README.md"} | {
        f"mrpc/{s}-00000-of-00001.parquet" for s in ("train", "validation", "test")}

    hub.log.clear()
    out = run_client(code, client_env(hub, tmp_path, offline=True)).stdout
    assert "'train': 512" in out and len(hub.log) == 0


def test_evaluate_load_online_then_offline(hub, tmp_path):
    code = ("import evaluate\n"
            "m = evaluate.load('glue', 'mrpc')\n"
            "print(m.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]))")
    out = run_client(code, client_env(hub, tmp_path)).stdout
    assert "{'accuracy': 0.75, 'f1': 0.6666666666666666}" in out
    # evaluate asks for the tag v<its version> first, then falls back to main.
    assert [(e.method, e.revision, e.status) for e in hub.log if e.file == "glue.py"] == [
        ("HEAD", "v0.4.6", 404), ("HEAD", "main", 200), ("GET", "main", 200)]

    hub.log.clear()
    out = run_client(code, client_env(hub, tmp_path, offline=True)).stdout
    assert "'accuracy': 0.75" in out and len(hub.log) == 0


def test_glue_metric_numpy_matches_sklearn_scipy():
    from devtools.hub import glue_metric as g

    assert g.matthews_corrcoef([1, 1, 0, 0], [1, 0, 1, 0]) == 0.0
    assert g.f1_binary([1, 1, 0], [1, 0, 1]) == pytest.approx(0.5)
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    r = random.Random(0)
    for _ in range(20):
        y, p = [r.randrange(3) for _ in range(50)], [r.randrange(3) for _ in range(50)]
        assert g.matthews_corrcoef(p, y) == pytest.approx(metrics.matthews_corrcoef(y, p))
        yb, pb = [v % 2 for v in y], [v % 2 for v in p]
        assert g.f1_binary(pb, yb) == pytest.approx(metrics.f1_score(yb, pb))
        a, b = [r.randrange(5) * 0.5 for _ in range(30)], [r.random() for _ in range(30)]
        assert g.pearson(g._rank(a), g._rank(b)) == pytest.approx(stats.spearmanr(a, b)[0])


# ---------------------------------------------------------------------------- ModelScope
def test_modelscope_model_and_dataset_without_torch(hub, tmp_path):
    # modelscope_hub.compat.* is the torch-free path; modelscope.hub.snapshot_download imports torch.
    code = ("import sys, os\n"
            "from modelscope_hub.compat.snapshot_download import snapshot_download, dataset_snapshot_download\n"
            f"p = snapshot_download({BERT!r}, allow_patterns=['*.json', '*.safetensors'])\n"
            "print(sorted(os.listdir(p)))\n"
            f"d = dataset_snapshot_download({GLUE!r}, allow_patterns=['mrpc/*', 'README.md'])\n"
            "print(sorted(os.listdir(d)), sorted(os.listdir(os.path.join(d, 'mrpc'))))\n"
            "print('torch' in sys.modules)")
    out = run_client(code, client_env(hub, tmp_path)).stdout.strip().splitlines()
    assert "model.safetensors" in out[0] and "'mrpc'" in out[1] and out[2] == "False"
    paths = [e.path.split("?")[0] for e in hub.log]
    assert "/api/v1/models/google-bert/bert-base-uncased/repo/files" in paths
    assert "/api/v1/datasets/nyu-mll/glue/repo/tree" in paths
    assert hub.log.fetched_files(GLUE) == {"README.md", "mrpc/train-00000-of-00001.parquet",
                                           "mrpc/validation-00000-of-00001.parquet", "mrpc/test-00000-of-00001.parquet"}


def test_modelscope_protocol_errors_and_listing(hub, hub_fixtures):
    st, _, body = req(hub, "/api/v1/models/nobody/nothing/repo/files?Revision=master&Recursive=True")
    assert st == 404 and json.loads(body)["Success"] is False
    st, _, body = req(hub, f"/api/v1/models/{BERT}/repo/files?Revision=master&Recursive=True")
    files = {f["Path"]: f for f in json.loads(body)["Data"]["Files"] if f["Type"] == "blob"}
    cfg = (hub_fixtures[("model", BERT)] / "config.json").read_bytes()
    assert files["config.json"]["Sha256"] == sha256(cfg) and files["config.json"]["Size"] == len(cfg)
    st, _, body = req(hub, f"/api/v1/datasets/{GLUE}/repo/tree?Revision=master&Recursive=True&PageNumber=2&PageSize=5")
    assert st == 200 and len(json.loads(body)["Data"]["Files"]) == 5
    st, _, _ = req(hub, f"/api/v1/models/{BERT}/repo?Revision=master&FilePath=nope.json")
    assert st == 404
    st, _, body = req(hub, f"/api/v1/models/{BERT}/repo?Revision=master&FilePath=config.json",
                       headers={"Range": "bytes=5-"})
    assert st == 206 and body == cfg[5:]
    assert req(hub, "/api/v1/repos/internalAccelerationInfo")[0] == 404


# ---------------------------------------------------------------------------- HF protocol
def test_hf_protocol_errors_aliases_and_revisions(hub, hub_fixtures, tmp_path):
    st, h, _ = req(hub, "/api/models/nobody/nothing/revision/main")
    assert (st, h["X-Error-Code"]) == (404, "RepoNotFound")
    st, h, _ = req(hub, f"/api/models/{BERT}/revision/nope")
    assert (st, h["X-Error-Code"]) == (404, "RevisionNotFound")
    st, h, _ = req(hub, f"/{BERT}/resolve/main/added_tokens.json", "HEAD")
    sha = hub.repos[("model", BERT)].default.sha
    assert (st, h["X-Error-Code"], h["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    st, h, _ = req(hub, "/bert-base-uncased/resolve/main/config.json", "HEAD")  # legacy name
    assert st == 307 and h["Location"] == f"/{BERT}/resolve/main/config.json"
    st, h, _ = req(hub, f"/{BERT}/resolve/{sha}/model.safetensors", "HEAD")
    size = (hub_fixtures[("model", BERT)] / "model.safetensors").stat().st_size
    assert st == 200 and h["ETag"].strip('"') == sha256((hub_fixtures[("model", BERT)] / "model.safetensors").read_bytes())
    assert int(h["Content-Length"]) == size and h["Accept-Ranges"] == "bytes" and h["X-Repo-Commit"] == sha
    tree = json.loads(req(hub, f"/api/models/{BERT}/tree/main?recursive=true")[2])
    lfs = {e["path"]: e.get("lfs") for e in tree if e["type"] == "file"}
    assert lfs["model.safetensors"]["oid"] == h["ETag"].strip('"') and lfs["config.json"] is None
    assert not any("xetHash" in e for e in tree)

    # Named revisions: a tag on another folder gets its own stable sha.
    hub.add_repo("model", "t/revs", hub_fixtures[("model", "google-bert/bert-base-cased")],
                 revisions={"v1": hub_fixtures[("model", BERT)], "same": None})
    info = {r: json.loads(req(hub, f"/api/models/t/revs/revision/{r}")[2])["sha"] for r in ("main", "v1", "same")}
    assert info["v1"] == sha and info["same"] == info["main"] != sha


def test_range_requests(hub, hub_fixtures):
    data = (hub_fixtures[("model", BERT)] / "vocab.txt").read_bytes()
    url = f"/{BERT}/resolve/main/vocab.txt"
    for rng, want in (("bytes=0-9", data[:10]), ("bytes=100-", data[100:]), ("bytes=-7", data[-7:])):
        st, h, body = req(hub, url, headers={"Range": rng})
        assert st == 206 and body == want and h["Content-Length"] == str(len(want))
    assert req(hub, url, headers={"Range": "bytes=0-4"})[1]["Content-Range"] == f"bytes 0-4/{len(data)}"
    st, h, _ = req(hub, url, headers={"Range": f"bytes={len(data)}-"})
    assert st == 416 and h["Content-Range"] == f"bytes */{len(data)}"
    assert [e.range for e in hub.log][:1] == ["bytes=0-9"]


# ---------------------------------------------------------------------------- fault knobs
def test_fault_fail_next_n_requests(hub):
    rule = hub.faults.fail("*/config.json", status=503, times=2)
    url = f"/{BERT}/resolve/main/config.json"
    assert [req(hub, url)[0] for _ in range(3)] == [503, 503, 200]
    assert rule.hits == 2 and [e.fault for e in hub.log] == ["fail", "fail", None]
    hub.faults.fail("*/repo/files*")  # ModelScope answers with its JSON envelope
    st, _, body = req(hub, f"/api/v1/models/{BERT}/repo/files?Revision=master")
    assert st == 500 and json.loads(body)["Success"] is False


def test_fault_drop_then_resume_with_range(hub, hub_fixtures):
    data = (hub_fixtures[("model", BERT)] / "model.safetensors").read_bytes()
    hub.faults.drop("*/model.safetensors", after_bytes=1000)
    url = f"{hub.url}/{BERT}/resolve/main/model.safetensors"
    with pytest.raises(http.client.IncompleteRead) as exc:
        urllib.request.urlopen(url).read()
    part = exc.value.partial
    assert len(part) == 1000 and hub.log.entries[-1].fault == "drop"
    rest = urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={len(part)}-"}))
    assert rest.status == 206 and part + rest.read() == data  # dropped only once


def test_fault_slow_body(hub):
    hub.faults.slow("*/tokenizer.json", bytes_per_sec=100_000)
    t0 = time.monotonic()
    st, _, body = req(hub, f"/{BERT}/resolve/main/tokenizer.json")
    assert st == 200 and time.monotonic() - t0 >= 0.8 * len(body) / 100_000


def test_fault_missing_file(hub):
    hub.faults.missing("*/vocab.txt")
    st, h, _ = req(hub, f"/{BERT}/resolve/main/vocab.txt", "HEAD")
    assert (st, h["X-Error-Code"]) == (404, "EntryNotFound") and h["X-Repo-Commit"]
    tree = json.loads(req(hub, f"/api/models/{BERT}/tree/main?recursive=true")[2])
    ms = json.loads(req(hub, f"/api/v1/models/{BERT}/repo/files?Revision=master&Recursive=True")[2])
    assert "vocab.txt" not in {e["path"] for e in tree} | {e["Path"] for e in ms["Data"]["Files"]}
    hub.faults.clear()
    hub.faults.missing("*/vocab.txt", listed=True)  # advertised but gone: an inconsistent hub
    tree = json.loads(req(hub, f"/api/models/{BERT}/tree/main?recursive=true")[2])
    assert "vocab.txt" in {e["path"] for e in tree}
    assert req(hub, f"/api/v1/models/{BERT}/repo?Revision=master&FilePath=vocab.txt")[0] == 404


def test_fault_corrupt_bytes_keep_advertised_hash(hub, hub_fixtures):
    data = (hub_fixtures[("model", BERT)] / "config.json").read_bytes()
    hub.faults.corrupt("*/config.json")
    st, h, body = req(hub, f"/{BERT}/resolve/main/config.json")
    assert st == 200 and len(body) == len(data) and body != data
    ms = json.loads(req(hub, f"/api/v1/models/{BERT}/repo/files?Revision=master&Recursive=True")[2])
    assert {e["Path"]: e.get("Sha256") for e in ms["Data"]["Files"]}["config.json"] == sha256(data)


# ---------------------------------------------------------------------------- faults x real clients
def test_real_clients_resume_a_dropped_download(hub, tmp_path):
    # huggingface_hub only resumes from whole 10 MiB chunks it has written, so the file
    # must be bigger than that for a Range request to show up.
    repo = tmp_path / "big"
    repo.mkdir()
    (repo / "big.bin").write_bytes(random.Random(0).randbytes(12 * 1024 * 1024))
    hub.add_repo("model", "test/big", repo)
    want = sha256((repo / "big.bin").read_bytes())
    hub.faults.drop("*/big.bin", after_bytes=11_000_000, times=2)  # once per client
    env = client_env(hub, tmp_path)
    for code in ("from huggingface_hub import snapshot_download as d\np = d('test/big')",
                 "from modelscope_hub.compat.snapshot_download import snapshot_download as d\np = d('test/big')"):
        out = run_client(code + "\nimport hashlib; print(hashlib.sha256(open(p + '/big.bin', 'rb').read()).hexdigest())",
                         env).stdout
        assert out.strip().endswith(want)
    ranges = [e.range for e in hub.log.downloads("test/big") if e.range]
    assert ranges == ["bytes=10485760-", "bytes=11000000-"]  # HF: chunk boundary; MS: exact offset


def test_corrupt_bytes_versus_real_clients(hub, hub_fixtures, tmp_path):
    hub.faults.corrupt("*/config.json")
    env = client_env(hub, tmp_path)
    # ModelScope checks Sha256 from the listing: retries, then fails.
    proc = run_client("from modelscope_hub.compat.snapshot_download import snapshot_download as d\n"
                      f"d({BERT!r}, allow_patterns=['config.json'])", env, check=False)
    assert proc.returncode != 0 and "Hash mismatch" in proc.stderr
    # huggingface_hub (2.4) does not hash plain-HTTP downloads: the corrupt bytes land in the
    # cache.  hpcft must verify sizes/sha256 itself.  (Accept a future client that raises.)
    proc = run_client("from huggingface_hub import hf_hub_download as d\n"
                      f"print(open(d({BERT!r}, 'config.json'), 'rb').read().hex())", env, check=False)
    good = (hub_fixtures[("model", BERT)] / "config.json").read_bytes()
    assert proc.returncode != 0 or bytes.fromhex(proc.stdout.strip()) != good
    assert {e.fault for e in hub.log.downloads(BERT)} == {"corrupt"}
