"""``train.trust_remote_code``: a model that ships its own Python (GLM-4 style: ``auto_map`` in
config.json, ``*.py`` beside the weights) is refused by the pre-flight unless the job says so,
with every staged ``.py`` file and its sha256 named; nothing is queued. (The worker loading and
training such a model, and exporting it, are in tests/test_export_dtype.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from devtools.hub.llm_fixtures import write_alpaca
from devtools.hub.remote_model import make_tiny_remote_code_model


@pytest.fixture(scope="module")
def glm_repo(tmp_path_factory):
    return make_tiny_remote_code_model(tmp_path_factory.mktemp("glm") / "tiny-glm4")


def _stage(hpcft_home: Path, folder: Path) -> Path:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    return Path(register_local(Cache(hpcft_home / "cache"), "model", "tiny/glm-4-chat", folder,
                               aliases=["tiny-glm4"]).path)


def _job(tmp_path: Path, **train) -> Path:
    data = write_alpaca(tmp_path / "alpaca.jsonl", n=16)
    job = {"name": "glm-sft", "executor": "local",
           "train": {"task": "causal-lm", "model": "tiny-glm4", "dataset": str(data), "max_steps": 2, **train}}
    path = tmp_path / "glm.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_model_code_names_each_py_file_with_its_sha256(glm_repo):
    from hpcft.preflight.remote_code import model_code

    code = model_code(glm_repo)
    assert code.auto_map and code.needed
    want = [(n, hashlib.sha256((glm_repo / n).read_bytes()).hexdigest())
            for n in ("configuration_tinyglm.py", "modeling_tinyglm.py")]
    assert code.files == want
    plain = glm_repo.parent / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not model_code(plain).needed


def test_a_job_without_the_flag_is_refused_naming_the_code_and_nothing_is_queued(glm_repo, hpcft_home, run_hpcft,
                                                                               tmp_path):
    staged = _stage(hpcft_home, glm_repo)
    path = _job(tmp_path)
    for cmd in ("check", "submit"):
        proc = run_hpcft(cmd, str(path))
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "remote code" in ln]
        assert lines, proc.stdout + proc.stderr
        line = lines[0]
        for name in ("configuration_tinyglm.py", "modeling_tinyglm.py"):
            digest = hashlib.sha256((staged / name).read_bytes()).hexdigest()
            assert f"{name} (sha256 {digest})" in line
        assert "train.trust_remote_code: true" in line
    assert not list(hpcft_home.glob("runs/*glm-sft*"))
    runs = run_hpcft("runs", "--json")
    assert runs.returncode == 0 and "glm-sft" not in runs.stdout


def test_with_the_flag_the_check_passes_and_still_lists_the_code(glm_repo, hpcft_home, run_hpcft, tmp_path):
    _stage(hpcft_home, glm_repo)
    proc = run_hpcft("check", str(_job(tmp_path, trust_remote_code=True)))
    line = next(ln for ln in proc.stdout.splitlines() if "remote code" in ln)
    assert line.startswith("✓") and "modeling_tinyglm.py (sha256 " in line, proc.stdout


def test_the_flag_is_refused_on_a_classification_job(tmp_path, run_hpcft):
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump({"name": "cls", "executor": "local", "train": {
        "model": "bert-base-uncased", "dataset": "glue/mrpc", "trust_remote_code": True}}))
    proc = run_hpcft("check", str(path))
    assert proc.returncode == 2 and "trust_remote_code" in proc.stderr, proc.stderr
