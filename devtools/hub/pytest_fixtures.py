"""pytest fixtures for the loopback hub.  Use from a conftest with
``pytest_plugins = ["devtools.hub.pytest_fixtures"]`` or import them into a test module.

- ``hub_fixtures``  (session): {(kind, repo_id): folder} of the standard fixture set.
  Generated once per session, shared by its xdist workers (~5 s, imports transformers), or reused from
  ``$HPCFT_HUB_FIXTURES`` when set (versioned, so stale folders are regenerated).
- ``modelers_fixtures`` (session): the openMind tutorial's two repos under their Modelers ids.
- ``hub_server``    (session): a started HubServer serving both (legacy-name aliases on).
- ``hub``           (function): ``hub_server`` with faults and the log cleared before and
  after the test, and ``tree_page_size`` restored.
- ``client_env(hub, tmp_path, offline=False)`` / ``run_client(code, env)``: run a
  real client in a subprocess (huggingface_hub reads HF_ENDPOINT at import time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fixtures import make_modelers_fixtures, make_standard_fixtures
from .server import HubServer

# Variables from the developer's shell that would steer a client somewhere else.
_STRIP_PREFIXES = ("HF_", "HUGGINGFACE_", "MODELSCOPE_", "TRANSFORMERS_", "DATASETS_", "OPENMIND_", "HUB_WHITE_LIST")
_STRIP = {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"}


@pytest.fixture(scope="session")
def hub_fixtures(tmp_path_factory) -> dict:
    root = os.environ.get("HPCFT_HUB_FIXTURES")
    if not root:   # under xdist the workers share one set (make_standard_fixtures locks while it makes it)
        base = tmp_path_factory.getbasetemp()
        root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "hub-fixtures"
    return make_standard_fixtures(root)


@pytest.fixture(scope="session")
def modelers_fixtures(hub_fixtures) -> dict:
    """{(kind, Modelers id): folder}: PyTorch-NPU/bert_base_cased and AI_Connect/glue."""
    return make_modelers_fixtures(_root(hub_fixtures))


def _root(hub_fixtures: dict) -> Path:
    return next(iter(hub_fixtures.values())).parent


@pytest.fixture(scope="session")
def hub_server(hub_fixtures):
    server = HubServer()
    for (kind, rid), folder in hub_fixtures.items():
        server.add_repo(kind, rid, folder)
        if kind != "space":
            server.add_alias(kind, rid.split("/", 1)[1], rid)
    # the Modelers repos (no legacy-name redirects); made here, not via the modelers_fixtures fixture,
    # so modules that import only hub/hub_server keep working
    for (kind, rid), folder in make_modelers_fixtures(_root(hub_fixtures)).items():
        server.add_repo(kind, rid, folder)
    with server:
        yield server


@pytest.fixture
def hub(hub_server):
    page = hub_server.tree_page_size
    hub_server.reset()
    yield hub_server
    hub_server.reset()
    hub_server.tree_page_size = page


def client_env(hub: HubServer, tmp_path, *, offline: bool = False, **extra) -> dict:
    """A clean environment pointing the HF/ModelScope clients at ``hub``, caches in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in _STRIP and not k.startswith(_STRIP_PREFIXES)}
    env.update(hub.env())
    tmp = Path(tmp_path)
    env.update(HF_HOME=str(tmp / "hf"), MODELSCOPE_CACHE=str(tmp / "ms"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
               DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_client(code: str, env: dict, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in a subprocess; on failure show its output."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"client failed (rc={proc.returncode}):\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
