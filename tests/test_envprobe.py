"""The pre-flight asks the job's Python (hpcft/preflight/envprobe.py) and every task checks what
it needs before anything is queued (hpcft/preflight/requirements.py): through the real CLI, on
small fake venvs (a real interpreter behind bin/python, fake packages in site-packages)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from hpcft.preflight import envprobe
from tests.conftest import hpcft

PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def fake_venv(root: Path, *, torch: str | None = "2.13.0+cpu", cuda: str | None = None, hip: str | None = None,
              dists: dict[str, str] | None = None) -> Path:
    """A venv whose bin/python is the real interpreter; torch (its version.py only) and each of
    ``dists`` are fake packages: a folder and a dist-info, nothing importable that does anything."""
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    home = Path(getattr(sys, "_base_executable", sys.executable)).parent
    (root / "pyvenv.cfg").write_text(f"home = {home}\ninclude-system-site-packages = false\n")
    site = root / "lib" / PY / "site-packages"
    site.mkdir(parents=True)
    packages = dict(dists or {})
    if torch:
        packages["torch"] = torch
    for name, version in packages.items():
        module = name.replace("-", "_")
        (site / module).mkdir()
        # importing any of these fails loudly: the probe must not import them
        (site / module / "__init__.py").write_text(f"raise ImportError('the probe imported {module}')\n")
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if torch:
        (site / "torch" / "version.py").write_text(f"from typing import Optional\n__version__ = {torch!r}\n"
                                                   f"cuda: Optional[str] = {cuda!r}\nhip = {hip!r}\n")
    return root


def write_job(tmp_path: Path, venv: Path, task: str = "dpo", **resources) -> Path:
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    job = {"name": "envjob", "train": {"task": task, "model": "m", "dataset": "d.jsonl", "method": "lora"},
           "resources": resources, "env": {"venv": str(venv)}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def env_lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line[2:].startswith("environment")]


def nothing_queued(home: Path) -> None:
    runs = home / "runs"
    assert not runs.exists() or not any(runs.rglob("job.yaml")), list(runs.rglob("*"))


def test_dpo_without_trl_is_refused_in_one_line(tmp_path, hpcft_home):
    venv = fake_venv(tmp_path / "v")
    path = write_job(tmp_path, venv)
    proc = hpcft("submit", str(path), "--executor", "local", timeout=60)
    want = (f"environment: task: dpo needs trl but venv {venv} has none; install it there: "
            f"{venv}/bin/python -m pip install 'trl>=1.16' (or 'hpcft[preference]')")
    assert proc.returncode == 2 and f"{path}: {want}" in proc.stderr.splitlines(), proc.stderr
    nothing_queued(hpcft_home)
    check = hpcft("check", str(path), "--executor", "local", timeout=60)
    assert check.returncode == 2 and env_lines(check) == [f"✗ {want}"], check.stdout


def test_trl_below_the_floor_is_refused_and_a_good_env_passes(tmp_path, hpcft_home):
    old = fake_venv(tmp_path / "old", dists={"trl": "1.15.2"})
    check = hpcft("check", str(write_job(tmp_path, old)), "--executor", "local", timeout=60)
    assert env_lines(check) == [f"✗ environment: task: dpo needs trl>=1.16 but venv {old} has 1.15.2; upgrade it "
                                f"there: {old}/bin/python -m pip install 'trl>=1.16' (or 'hpcft[preference]')"]
    good = fake_venv(tmp_path / "good", dists={"trl": "1.16.0"})
    check = hpcft("check", str(write_job(tmp_path, good)), "--executor", "local", timeout=60)
    assert env_lines(check) == [f"✓ environment: venv {good}, asked: torch 2.13.0+cpu (a CPU-only build), "
                                "trl 1.16.0"], check.stdout


def test_gpu_job_on_a_cpu_only_torch_is_refused_naming_build_and_fix(tmp_path, hpcft_home, monkeypatch):
    monkeypatch.delenv("HPCFT_ALLOW_CPU_TORCH")
    venv = fake_venv(tmp_path / "v", dists={"trl": "1.16.0"})
    path = write_job(tmp_path, venv, gpus_per_node=1)
    proc = hpcft("submit", str(path), "--executor", "local", timeout=60)
    assert proc.returncode == 2
    assert (f"{path}: environment: task: dpo runs on GPUs but venv {venv} has torch 2.13.0+cpu (a CPU-only "
            f"build): install a CUDA build of torch in that env ({venv}/bin/python -m pip install torch "
            "--index-url https://download.pytorch.org/whl/cuXXX, matching the nodes' driver) or choose an env "
            "that has one") in proc.stderr.splitlines(), proc.stderr
    nothing_queued(hpcft_home)
    cuda = fake_venv(tmp_path / "cuda", torch="2.13.0+cu128", cuda="12.8", dists={"trl": "1.16.0"})
    check = hpcft("check", str(write_job(tmp_path, cuda, gpus_per_node=1)), "--executor", "local", timeout=60)
    assert env_lines(check) == [f"✓ environment: venv {cuda}, asked: torch 2.13.0+cu128 (CUDA 12.8), trl 1.16.0"]
    rocm = fake_venv(tmp_path / "rocm", torch="2.13.0+rocm6.4", hip="6.4.0", dists={"trl": "1.16.0"})
    check = hpcft("check", str(write_job(tmp_path, rocm, gpus_per_node=1)), "--executor", "local", timeout=60)
    assert [line[0] for line in env_lines(check)] == ["✓"], check.stdout


def test_npu_job_without_torch_npu_is_refused(tmp_path, hpcft_home, monkeypatch):
    monkeypatch.delenv("HPCFT_ALLOW_CPU_TORCH")
    venv = fake_venv(tmp_path / "v", dists={"trl": "1.16.0"})
    check = hpcft("check", str(write_job(tmp_path, venv, npus_per_node=1)), "--executor", "local", timeout=60)
    assert check.returncode == 2
    assert any(line.startswith(f"✗ torch_npu: NPU job but venv {venv} has no torch_npu") for line in
               check.stdout.splitlines()), check.stdout
    assert env_lines(check)[0].startswith("✓ environment")  # one line for one problem: torch_npu's own rule
    with_npu = fake_venv(tmp_path / "npu", dists={"trl": "1.16.0", "torch_npu": "2.13.0"})
    check = hpcft("check", str(write_job(tmp_path, with_npu, npus_per_node=1)), "--executor", "local", timeout=60)
    assert env_lines(check) == [f"✓ environment: venv {with_npu}, asked: torch 2.13.0+cpu (with torch_npu), "
                                "trl 1.16.0"]


def test_an_env_that_cannot_be_run_from_here_falls_back_to_its_files(tmp_path, hpcft_home):
    venv = fake_venv(tmp_path / "v", dists={"trl": "1.16.0"})
    (venv / "bin" / "python").unlink()  # e.g. a conda env whose interpreter lives on another mount
    check = hpcft("check", str(write_job(tmp_path, venv)), "--executor", "local", timeout=60)
    assert env_lines(check) == [f"✓ environment: venv {venv}, looked up by its files ({venv}/bin/python cannot be "
                                "run from here; the node checks again): torch 2.13.0+cpu (a CPU-only build), "
                                "trl 1.16.0"], check.stdout


def test_serve_api_submit_on_a_gpu_run_with_a_cpu_only_torch_is_refused_before_sbatch(tmp_path, hpcft_home,
                                                                                     monkeypatch):
    from devtools.fakeruns import fake_run
    from hpcft.core.atomic import atomic_write_json

    monkeypatch.delenv("HPCFT_ALLOW_CPU_TORCH")
    venv = fake_venv(tmp_path / "v", dists={"fastapi": "0.115.0"})
    paths = fake_run(hpcft_home / "runs", "served", partition="gpu")
    paths.output.mkdir(parents=True, exist_ok=True)
    (paths.output / "config.json").write_text("{}")
    atomic_write_json(paths.metrics, {**json.loads(paths.metrics.read_text()), "task": "causal-lm"})
    paths.job_yaml.write_text(yaml.safe_dump({"name": "served", "train": {"task": "causal-lm", "model": "m",
                                                                           "dataset": "d.jsonl"},
                                              "resources": {"partition": "gpu", "gpus_per_node": 1},
                                              "env": {"venv": str(venv)}}))
    proc = hpcft("serve", paths.run_id, "--api", "--submit", timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [
        f"hpcft serve --api --submit runs on GPUs but venv {venv} has torch 2.13.0+cpu (a CPU-only build): install "
        f"a CUDA build of torch in that env ({venv}/bin/python -m pip install torch --index-url "
        "https://download.pytorch.org/whl/cuXXX, matching the nodes' driver) or choose an env that has one",
        f"hpcft serve --api --submit needs uvicorn but venv {venv} has none; install it there: {venv}/bin/python "
        "-m pip install 'uvicorn>=0.29' (or 'hpcft[api]')"], proc.stderr
    assert not (paths.dir / "serve").exists()  # nothing written, nothing queued


def test_the_probe_does_not_import_torch_and_is_cached(tmp_path, monkeypatch):
    venv = fake_venv(tmp_path / "v", torch="2.13.0+cu128", cuda="12.8", dists={"trl": "1.16.0"})
    envprobe.forget()
    facts = envprobe.probe(str(venv / "bin" / "python"), home=tmp_path / "home")
    assert facts is not None and not facts.cached
    assert facts.imported == []  # the fake torch raises on import: reaching here means it was not imported
    assert (facts.torch_build, facts.version("trl"), facts.has("trl"), facts.has("lm_eval")) == ("cuda", "1.16.0",
                                                                                                True, False)
    runs = []
    real = envprobe._run
    monkeypatch.setattr(envprobe, "_run", lambda *a: runs.append(a) or real(*a))
    assert envprobe.probe(str(venv / "bin" / "python"), home=tmp_path / "home") is facts  # this process: memo
    envprobe.forget()
    again = envprobe.probe(str(venv / "bin" / "python"), home=tmp_path / "home")  # a second submit: the disk
    assert runs == [] and again.cached and again.dists == facts.dists
    site = venv / "lib" / PY / "site-packages"
    (site / "lm_eval").mkdir()  # an install changes site-packages' mtime: asked again
    (site / "lm_eval" / "__init__.py").write_text("")
    os.utime(site, ns=(os.stat(site).st_atime_ns, os.stat(site).st_mtime_ns + 1))
    envprobe.forget()
    fresh = envprobe.probe(str(venv / "bin" / "python"), home=tmp_path / "home")
    assert len(runs) == 1 and not fresh.cached and fresh.has("lm_eval")
    entry = next((tmp_path / "home" / "envprobe").glob("*.json"))
    assert entry.stat().st_mode & 0o077 == 0
    envprobe.forget()


def test_helper_jobs_check_their_own_needs(tmp_path, monkeypatch):
    from hpcft.core.job import Job
    from hpcft.preflight.requirements import aux_problems

    monkeypatch.delenv("HPCFT_ALLOW_CPU_TORCH")
    venv = fake_venv(tmp_path / "v", dists={"lm-eval": "0.4.9"})
    job = Job(name="aux", script="x.py", resources={"gpus_per_node": 1}, env={"venv": str(venv)})
    assert aux_problems(job, tmp_path, "export", []) == []   # the export worker merges on the CPU
    assert aux_problems(job, tmp_path, "tensorboard", []) == []
    eval_lines = aux_problems(job, tmp_path, "eval", ["--backend", "vllm", "--dtype", "auto"])
    assert [line.split(" but ")[0] for line in eval_lines] == [
        "hpcft eval --submit runs on GPUs", "hpcft eval --submit needs lm-eval>=0.4.10",
        "hpcft eval --submit needs vllm"], eval_lines
    cpu = Job(name="aux", script="x.py", env={"venv": str(venv)})
    assert aux_problems(cpu, tmp_path, "predict", []) == []
