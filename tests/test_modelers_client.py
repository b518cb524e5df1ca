"""The loopback hub's Modelers API checked against the real ``openmind_hub`` client, and the
offline contract for script jobs: ``openmind_hub``'s ``local_files_only`` calls resolve what
hpcft staged, by the hub names, through the variables hpcft exports.

The client speaks https only, to hosts under modelers.cn & co., and verifies certificates: the
hub serves TLS with a throw-away certificate for ``hub.modelers.cn`` (trusted through
``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``), and the name resolves to 127.0.0.1 only inside the
test's own ``unshare --mount`` with a bind-mounted hosts file (devtools/hub/tls.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.hub.pytest_fixtures import hub, hub_fixtures, hub_server, modelers_fixtures  # noqa: F401
from devtools.hub.server import HubServer
from devtools.hub.tls import Cert, resolve_in_hosts
from hpcft.core.offline import link_openmind_cache, offline_env, openmind_env
from hpcft.core.store import Cache
from tests.conftest import IN_CI

pytestmark = pytest.mark.hub

BERT = "PyTorch-NPU/bert_base_cased"
GLUE = "AI_Connect/glue"
NAME = "hub.modelers.cn"
_STRIP = ("HF_", "MODELSCOPE_", "HUGGINGFACE_", "OPENMIND_", "HUB_WHITE_LIST", "XDG_CACHE_HOME", "REQUESTS_CA",
          "SSL_CERT", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")


def _require(ok: bool, msg: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(msg + " (CI=true: required)")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def namespaces():
    """A private mount namespace works here (root + util-linux unshare) and the client is installed."""
    try:
        import openmind_hub  # noqa: F401
    except ImportError:
        _require(False, "openmind-hub is not installed (pip install openmind-hub, the dev extra)")
    proc = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    _require(proc.returncode == 0, f"unshare --mount does not work here: {proc.stderr.strip()}")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP)}
    env.update(OM_HUB_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _in_ns(argv, env, tmp_path, timeout=120):
    cmd = resolve_in_hosts(argv, [NAME], tmp_path / "hosts")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


CLIENT = """
import json, sys
from openmind_hub import snapshot_download
cache = sys.argv[1]
model = snapshot_download("PyTorch-NPU/bert_base_cased", cache_dir=cache)
data = snapshot_download("AI_Connect/glue", repo_type="dataset", cache_dir=cache, allow_patterns=["README.md", "cola/*"])
print("PATHS", json.dumps({"model": model, "dataset": data}))
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_real_client_gets_the_files_hpcft_stages(namespaces, modelers_fixtures, tmp_path, hpcft_home):  # noqa: F811
    cert = Cert.make(tmp_path / "tls", NAME)
    server = HubServer(tls=cert, hostname=NAME)
    for (kind, rid), folder in modelers_fixtures.items():
        server.add_repo(kind, rid, folder)
    with server:
        env = _env(OPENMIND_HUB_ENDPOINT=server.url, **cert.client_env())
        client = _in_ns([sys.executable, "-c", CLIENT, str(tmp_path / "omcache")], env, tmp_path)
        assert client.returncode == 0, client.stdout[-2000:] + client.stderr[-4000:]
        # hpcft over the same https endpoint (urllib trusts the certificate through SSL_CERT_FILE)
        staged = _in_ns([sys.executable, "-m", "hpcft.cli.main", "stage", BERT, f"{GLUE}:cola",
                         "--source", "modelers", "--json"], env, tmp_path)
        assert staged.returncode == 0, staged.stderr[-3000:]
        client_log = [e for e in server.log if e.file is not None]
    paths = json.loads(client.stdout.split("PATHS", 1)[1])
    by_hpcft = {a["kind"]: a for a in json.loads(staged.stdout)["assets"]}
    for kind, rid in (("model", BERT), ("dataset", GLUE)):
        got = _files(Path(paths[kind]))
        want = _files(modelers_fixtures[(kind, rid)])
        if kind == "dataset":  # the client was asked for the card and the cola folder only
            want = {p: b for p, b in want.items() if p == "README.md" or p.startswith("cola/")}
        assert got == want, (kind, sorted(set(got) ^ set(want)))
        # same commit: the client names its snapshot folder after the commit hpcft recorded
        assert Path(paths[kind]).name == by_hpcft[kind]["sha"]
        asset = Cache(Path(os.environ["HPCFT_CACHE"])).find(kind, rid, "cola" if kind == "dataset" else None)
        listed = [f["path"] for f in asset.manifest["files"]]  # what hpcft fetched and verified
        assert listed and all(got[p] == (asset.path / p).read_bytes() for p in listed)
    assert client_log and all(e.status in (200, 206) for e in client_log)


PROBE = """
import json
from openmind_hub import om_hub_download, snapshot_download
out = {
    "model": snapshot_download("PyTorch-NPU/bert_base_cased", local_files_only=True),
    "config": om_hub_download("PyTorch-NPU/bert_base_cased", "config.json", local_files_only=True),
    "dataset": snapshot_download("AI_Connect/glue", repo_type="dataset", local_files_only=True),
    "train": om_hub_download("AI_Connect/glue", "cola/train-00000-of-00001.parquet", repo_type="dataset",
                             local_files_only=True),
}
print("PATHS", json.dumps(out))
"""


def test_offline_local_files_only_resolves_staged_assets_by_hub_name(namespaces, hub, hpcft_home,  # noqa: F811
                                                                      run_hpcft, tmp_path):
    env = {"OPENMIND_HUB_ENDPOINT": hub.url, "HF_ENDPOINT": hub.url}
    run_hpcft("stage", BERT, f"{GLUE}:cola", "--source", "modelers", env=env, check=True)
    with socket.socket() as s:  # a port nobody listens on: the hub is "stopped"
        s.bind(("127.0.0.1", 0))
        dead = f"https://{NAME}:{s.getsockname()[1]}"
    cache_root = Path(os.environ["HPCFT_CACHE"])
    run_dir = tmp_path / "run"  # what prepare_run gives a script job
    link_openmind_cache(cache_root, run_dir)
    job = _env(OPENMIND_HUB_ENDPOINT=dead, HF_ENDPOINT=dead, **offline_env(cache_root),
               **openmind_env(cache_root, run_dir))
    argv = [sys.executable, "-c", PROBE]
    proc = _in_ns(argv, job, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(proc.stdout.split("PATHS", 1)[1])
    cache = Cache(cache_root)
    om_hub = run_dir / "xdg" / "openmind" / "hub"
    model, data = cache.find("model", BERT), cache.find("dataset", GLUE, "cola")
    assert got["model"] == str(om_hub / "models--PyTorch-NPU--bert_base_cased" / "snapshots" / model.manifest["sha"])
    assert Path(got["model"]).resolve() == model.path.resolve()
    assert Path(got["config"]).read_bytes() == (model.path / "config.json").read_bytes()
    assert Path(got["dataset"]).resolve() == data.path.resolve()
    assert Path(got["train"]).read_bytes() == (data.path / "cola/train-00000-of-00001.parquet").read_bytes()
    # without hpcft's shim the client asks the (dead) hub whether the repo exists, and fails
    off = _in_ns(argv, {**job, "HPCFT_SHIM": "0"}, tmp_path, timeout=120)
    assert off.returncode != 0 and "Connection" in off.stderr, off.stderr[-2000:]


# The `openmind` library needs Python < 3.11 (this venv has 3.11): a stand-in with its import
# structure -- integrations.datasets.load_dataset, which asks the hub for any name that is not a
# local path, and omdatasets.OmDataset, which binds that function by name at import.
FAKE_OPENMIND = {
    "openmind/__init__.py": "",
    "openmind/integrations/__init__.py": "",
    "openmind/integrations/datasets.py": (
        "import os\n"
        "def load_dataset(path=None, name=None, revision='main', split=None, **kwargs):\n"
        "    if not os.path.exists(path):\n"
        "        raise ValueError('The path is not valid `namespace/datasetname` (repo_info needs the hub)')\n"
        "    return {'path': path, 'name': name, 'revision': revision}\n"),
    "openmind/omdatasets.py": (
        "from openmind.integrations.datasets import load_dataset\n"
        "class OmDataset:\n"
        "    @staticmethod\n"
        "    def load_dataset(path=None, name=None, revision='main', **kwargs):\n"
        "        return load_dataset(path, name, revision, **kwargs)\n"),
}


def test_omdataset_load_dataset_by_hub_name_gets_the_staged_folder(hub, hpcft_home, run_hpcft, tmp_path):  # noqa: F811
    run_hpcft("stage", f"{GLUE}:cola", "--source", "modelers", env={"OPENMIND_HUB_ENDPOINT": hub.url}, check=True)
    for rel, text in FAKE_OPENMIND.items():
        (tmp_path / "lib" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lib" / rel).write_text(text)
    cache_root = Path(os.environ["HPCFT_CACHE"])
    job = _env(**offline_env(cache_root))
    job["PYTHONPATH"] = f"{job['PYTHONPATH']}:{tmp_path / 'lib'}"
    code = ("import json\nfrom openmind.omdatasets import OmDataset\n"
            "print('GOT', json.dumps(OmDataset.load_dataset('AI_Connect/glue', 'cola')))")
    proc = subprocess.run([sys.executable, "-c", code], env=job, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.split("GOT", 1)[1])
    assert got == {"path": str(Cache(cache_root).find("dataset", GLUE, "cola").path), "name": "cola",
                   "revision": "main"}
    assert "hpcft: openmind load_dataset('AI_Connect/glue', 'cola') -> staged copy" in proc.stderr
    unshimmed = subprocess.run([sys.executable, "-c", code], env={**job, "HPCFT_SHIM": "0"}, capture_output=True,
                               text=True, timeout=60)
    assert unshimmed.returncode != 0 and "repo_info needs the hub" in unshimmed.stderr
