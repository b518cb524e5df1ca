"""Nothing that ships is lost: the wheel built from pyproject.toml holds every module and data file
of the source tree, and installed into a fresh venv outside the checkout it runs ``hpcft --help``,
``hpcft render`` of an example job and a local-executor job whose script sees the offline shim.
And the conda files in envs/ install hpcft from this checkout (hpcft is not on PyPI: a package of
that name published by someone else would be installed instead)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [whl] = out.glob("hpcft-*.whl")
    return whl


def test_the_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    src = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hpcft").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml")}
    assert src - names == set(), f"in the tree but not in the wheel: {sorted(src - names)}"
    templates = {f"hpcft/templates/{p.name}" for p in (ROOT / "templates").glob("*.j2")}
    assert templates and templates <= names, sorted(templates - names)
    assert {"hpcft/core/aliases.yaml", "hpcft/offline_shim/sitecustomize.py",
            "hpcft/offline_shim/hpcft_trust.py"} <= names


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        msg = f"pip install of the wheel into a fresh venv failed (needs PyPI for its dependencies): {proc.stderr[-1500:]}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.py").write_text("import sys, hpcft\n"
                                 "shim = sys.modules.get('sitecustomize')\n"
                                 "print('HPCFT_FROM', hpcft.__file__)\n"
                                 "print('SHIM', getattr(shim, '__file__', None))\n")
    (work / "job.yaml").write_text("name: wheel-check\nscript: run.py\nexecutor: local\nresources: {time: 10}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HPCFT_HOME=str(tmp_path / "home"), HPCFT_CONFIG=str(tmp_path / "none.yaml"), PATH=f"{env_dir / 'bin'}:"
               + os.environ.get("PATH", ""))
    env.pop("HPCFT_CACHE", None)

    def hpcft(*args, cwd=work):
        return subprocess.run([str(env_dir / "bin" / "hpcft"), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)

    helped = hpcft("--help")
    assert helped.returncode == 0 and "stage" in helped.stdout and "submit" in helped.stdout, helped.stderr
    rendered = hpcft("render", str(ROOT / "jobs" / "mrpc-bert-gpu.yaml"))
    assert rendered.returncode == 0 and rendered.stdout.startswith("#!/bin/bash"), rendered.stderr
    assert "#SBATCH" in rendered.stdout and "hpcft.entry" not in rendered.stderr
    done = hpcft("submit", "job.yaml", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    log = next((tmp_path / "home" / "runs").glob("*/job.*.out")).read_text()
    installed = str(env_dir)
    assert re.search(rf"HPCFT_FROM {re.escape(installed)}\S*/site-packages/hpcft/__init__.py", log), log
    assert re.search(rf"SHIM {re.escape(installed)}\S*/site-packages/hpcft/offline_shim/sitecustomize.py", log), log


@pytest.mark.parametrize("env_file", sorted(p.name for p in (ROOT / "envs").glob("*.yml")))
def test_env_files_install_hpcft_from_the_checkout(env_file, tmp_path):
    """conda runs an env file's pip part in the file's folder: ``..[extras]`` is this checkout."""
    doc = yaml.safe_load((ROOT / "envs" / env_file).read_text())
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict) and "pip" in d)
    ours = [r for r in pip if re.fullmatch(r"\.\.(\[[a-z,]+\])?", r)]
    assert ours, f"{env_file}: hpcft is not installed from the checkout ({pip})"
    assert not [r for r in pip if re.match(r"hpcft\b", r)], f"{env_file}: 'hpcft' by name would come from PyPI"
    extras = set(re.findall(r"[a-z]+", ours[0].partition("[")[2]))
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = set(re.findall(r"^([a-z]+) = \[", pyproject.split("[project.optional-dependencies]")[1]
                              .split("\n[")[0], re.M))
    assert extras <= declared, f"{env_file}: unknown extras {sorted(extras - declared)}"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                           "--report", str(tmp_path / "report.json"), "-q", ours[0]], cwd=ROOT / "envs",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert [i["metadata"]["name"] for i in report["install"]] == ["hpcft"], report["install"]
