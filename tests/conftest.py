"""Shared fixtures. Every test gets its own HPCFT_HOME / cache / config dirs, so no test
touches a real home; Slurm tests use the real dev cluster (devtools/cluster/dev-slurm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import xdist_groups

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------- running in parallel
# scripts/test runs the newest lane with `-n 4 --dist loadgroup`: the Slurm modules side by side,
# the in-process tier serially on one worker, longest first (devtools/xdist_groups.py says why).

@pytest.hookimpl(tryfirst=True)   # before xdist reads the xdist_group marks into the node ids
def pytest_collection_modifyitems(config, items):
    slurm_modules = {item.location[0] for item in items if item.get_closest_marker("slurm")}
    module_groups: dict[str, str] = {}
    counts: dict[str, int] = {}
    for item in items:
        module = item.location[0]
        group = module_groups.setdefault(module, xdist_groups.group_of(module, slurm_modules))
        counts[module] = counts.get(module, 0) + 1
        item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):   # every worker sorts alike: the order xdist hands groups out
        ranked = xdist_groups.order(module_groups, counts, xdist_groups.load_durations())
        rank = {g: i for i, g in enumerate(ranked)}
        items.sort(key=lambda it: rank[module_groups[it.location[0]]])   # stable: modules keep their order
        xdist_groups.publish({it.nodeid: module_groups[it.location[0]] for it in items})


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        config._hpcft_groups_file = xdist_groups.announce()   # before the workers start: they inherit it


def pytest_unconfigure(config):
    path = getattr(config, "_hpcft_groups_file", None)
    if path is not None:
        path.unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadgroup":
        return xdist_groups.make_scheduler(config, log)
    return None


def shared_tmp(tmp_path_factory, name: str) -> Path:
    """A folder every xdist worker of this session shares (the workers' base temp's parent),
    or the session's own when running without xdist."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_ops_dir(tmp_path_factory):
    """One build folder for DeepSpeed's compiled ops across the session's multi-rank CPU jobs
    (devtools.faults.fault_env(cpu_fallback=True) passes it on): the op is built once, not per
    test or per xdist worker (torch's extension builder locks the folder while it builds). The
    per-user ops cache itself is tested in tests/test_distributed.py."""
    path = shared_tmp(tmp_path_factory, "shared-ops")
    os.environ["HPCFT_TEST_OPS_DIR"] = str(path)
    yield path
    os.environ.pop("HPCFT_TEST_OPS_DIR", None)


@pytest.fixture(autouse=True)
def hpcft_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hpcft-home")
    monkeypatch.setenv("HPCFT_HOME", str(home))
    monkeypatch.setenv("HPCFT_CACHE", str(home / "cache"))
    monkeypatch.setenv("HPCFT_CONFIG", str(home / "no-cluster-config.yaml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    monkeypatch.delenv("HPCFT_USER_CONFIG", raising=False)
    # the dev cluster's GPUs/NPUs are fake gres: its GPU jobs train on the CPU torch on purpose
    # (devtools/faults cpu_fallback), which the pre-flight otherwise refuses (tests/test_envprobe.py)
    monkeypatch.setenv("HPCFT_ALLOW_CPU_TORCH", "1")
    from hpcft.preflight import envprobe

    envprobe.forget()   # the env probe's in-process answers are per test: a test's envs are its own
    return home


def _dev_slurm_conf() -> str | None:
    """SLURM_CONF of the dev cluster if it is up (devtools/cluster/dev-slurm env / status)."""
    script = ROOT / "devtools" / "cluster" / "dev-slurm"
    if not script.exists() or shutil.which("sbatch") is None:
        return None
    out = subprocess.run([str(script), "env"], capture_output=True, text=True).stdout
    conf = None
    for line in out.splitlines():
        if line.startswith("export SLURM_CONF="):
            conf = line.split("=", 1)[1].strip().strip("'\"")
    if not conf:
        return None
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env={**os.environ, "SLURM_CONF": conf})
    return conf if ping.returncode == 0 and "UP" in ping.stdout else None


@pytest.fixture(scope="session")
def slurm_conf():
    """The dev cluster's SLURM_CONF. Missing Slurm fails under CI=true, skips otherwise."""
    conf = _dev_slurm_conf()
    if conf is None:
        msg = "no Slurm cluster: run 'devtools/cluster/dev-slurm up' first"
        if IN_CI:
            pytest.fail(msg + " (CI=true: Slurm is required)")
        pytest.skip(msg)
    return conf


@pytest.fixture
def slurm(slurm_conf, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    return slurm_conf


def hpcft(*args: str, check: bool = False, timeout: float = 120, env: dict | None = None,
          cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would)."""
    proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcft {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def hpcft_json(*args: str, **kw):
    proc = hpcft(*args, "--json", check=True, **kw)
    return json.loads(proc.stdout)


@pytest.fixture
def run_hpcft():
    return hpcft
