"""``train.method: qlora`` without Slurm: the job file's ``quantization:`` block, the QLoRA
pre-flight rule (NPU, already-quantized models, bitsandbytes in the job's env), the memory plan
and estimate, and (in-process, newest lane) a tiny Llama loaded 4-bit that trains. The real-cluster run and
the merged export are tests/test_qlora_slurm.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from hpcft.core.config import Settings, load_settings
from hpcft.core.errors import ConfigError
from hpcft.core.job import Job
from hpcft.core.job_load import load_job
from hpcft.core.memory.estimate import Plan, estimate, shape_from_config
from hpcft.core.quantization import QuantizationSpec, compute_dtype, model_quantization, quantized_problem
from hpcft.preflight.checks import Preflight
from hpcft.preflight.memcheck import fixes, plan_of
from hpcft.preflight.quantization import qlora
from tests.conftest import IN_CI, ROOT, hpcft
from tests.data.memory_measured import QWEN25_7B

BASE = """\
    name: q
    train:
      task: causal-lm
      model: m
      dataset: d.jsonl
    """


def _problems(tmp_path, extra: str, base: str = BASE) -> tuple[list[str], str]:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(base) + textwrap.indent(textwrap.dedent(extra), "  "))
    with pytest.raises(ConfigError) as info:
        load_job(path, load_settings())
    return info.value.lines(), str(path)


def test_defaults_and_a_full_block(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(BASE) + "  method: qlora\n")
    t = load_job(path, load_settings()).job.train
    assert t.llm_method == "qlora" and t.adapter_method and t.learning_rate == 1e-4
    assert t.quant == QuantizationSpec(bits=4, type="nf4", double_quant=True, compute_dtype=None)
    assert compute_dtype(t.quant, "fp32") == "fp32" and compute_dtype(t.quant, "bf16") == "bf16"
    path.write_text(textwrap.dedent(BASE.replace("causal-lm", "dpo")) + "  method: qlora\n"
                    "  quantization: {bits: 4, type: fp4, double_quant: false, compute_dtype: fp16}\n")
    t = load_job(path, load_settings()).job.train
    assert t.is_preference and t.learning_rate == 5e-6
    assert t.quant.describe(compute_dtype(t.quant, "bf16")) == "4-bit fp4, compute fp16"
    assert QuantizationSpec(bits=8).describe("bf16") == "8-bit LLM.int8"


def test_bad_quantization_values_one_line_each_with_the_nearest_key(tmp_path):
    lines, path = _problems(tmp_path, """\
        method: qlora
        quantization: {bits: 3, type: nf5, doble_quant: true, compute_dtype: int8}
        """)
    assert lines == [
        f"{path}:7: train.quantization.bits: Input should be 4 or 8 (got 3)",
        f"{path}:7: train.quantization.type: Input should be 'nf4' or 'fp4' (got 'nf5')",
        f"{path}:7: train.quantization.compute_dtype: Input should be 'bf16', 'fp16' or 'fp32' (got 'int8')",
        f"{path}:7: unknown key 'doble_quant' in train.quantization; did you mean 'double_quant'? "
        "(valid: bits, type, double_quant, compute_dtype)"]
    lines, _ = _problems(tmp_path, "method: qlora\nquantization: {bits: 8, type: fp4}\n")
    assert len(lines) == 1 and "type: only for bits: 4 (bits: 8 is LLM.int8" in lines[0]
    lines, _ = _problems(tmp_path, "method: qlra\n")
    assert len(lines) == 1 and "'lora', 'qlora' or 'full'" in lines[0]


def test_quantization_belongs_to_qlora_and_qlora_to_no_deepspeed(tmp_path):
    lines, _ = _problems(tmp_path, "quantization: {bits: 4}\n")
    assert len(lines) == 1 and "quantization: is set but method is lora (the default); use method: qlora" in lines[0]
    lines, _ = _problems(tmp_path, "method: qlora\ndeepspeed: 2\n")
    assert len(lines) == 1 and "deepspeed: with method: qlora is not supported" in lines[0]
    lines, _ = _problems(tmp_path, "method: qlora\n", base=BASE.replace("causal-lm", "sequence-classification"))
    assert len(lines) == 1 and "method: only for task: causal-lm" in lines[0]


def test_cli_check_exits_2_with_one_line_per_problem(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(BASE) + "  method: qlora\n  quantization: {bits: 16, type: int4}\n")
    proc = hpcft("check", str(path))
    assert proc.returncode == 2, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith(str(path))]
    assert len(errors) == 2 and "quantization.bits" in errors[0] and "quantization.type" in errors[1], proc.stderr


# --------------------------------------------------------------------------- the pre-flight rule

def _model(tmp_path: Path, quantization: dict | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    cfg = dict(QWEN25_7B, architectures=["Qwen2ForCausalLM"], torch_dtype="bfloat16")
    if quantization:
        cfg["quantization_config"] = quantization
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _venv(tmp_path: Path, *packages: str) -> Path:
    prefix = tmp_path / "venv"
    for name in packages:
        (prefix / "lib" / "python3.11" / "site-packages" / name).mkdir(parents=True, exist_ok=True)
    (prefix / "lib" / "python3.11" / "site-packages").mkdir(parents=True, exist_ok=True)
    return prefix


def _check(tmp_path, quantization=None, packages=("bitsandbytes",), **resources):
    job = Job.model_validate({"name": "q", "env": {"venv": str(_venv(tmp_path, *packages))}, "resources": resources,
                              "train": {"task": "causal-lm", "model": str(_model(tmp_path, quantization)),
                                        "dataset": "d.jsonl", "method": "qlora"}})
    found = list(qlora(Preflight(job, Settings(cache_dir=tmp_path / "cache"), tmp_path)))
    assert len(found) == 1, found
    return found[0]


def test_preflight_passes_with_bitsandbytes_in_the_jobs_env(tmp_path):
    c = _check(tmp_path, gpus_per_node=1)
    assert c.ok and c.message == f"4-bit nf4 double-quantized, compute bf16; bitsandbytes in venv {tmp_path}/venv"


def test_preflight_refuses_npu_with_the_reason(tmp_path):
    c = _check(tmp_path, npus_per_node=1)
    assert not c.ok and "method: qlora cannot run on the NPU partition" in c.message
    assert "source build" in c.message and "CANN" in c.message and "method: lora" in c.message


def test_preflight_refuses_a_model_quantized_already(tmp_path):
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    c = _check(tmp_path, gptq, gpus_per_node=1)
    assert not c.ok and "is quantized already with gptq (config.json quantization_config)" in c.message
    c = _check(tmp_path, {"quant_method": "bitsandbytes", "load_in_4bit": True}, gpus_per_node=1)
    assert not c.ok and "a 4-bit bitsandbytes upload" in c.message and "name the original model" in c.message
    assert model_quantization(_model(tmp_path)) is None and quantized_problem(_model(tmp_path), "m") is None


def test_preflight_refuses_an_env_without_bitsandbytes(tmp_path):
    c = _check(tmp_path, packages=("torch",), gpus_per_node=1)
    assert not c.ok and c.message == (f"method: qlora needs bitsandbytes but venv {tmp_path}/venv has none; install "
                                      f"it there: {tmp_path}/venv/bin/python -m pip install 'hpcft[qlora]' "
                                      "(or 'bitsandbytes>=0.45')")


def test_every_problem_in_one_line(tmp_path):
    c = _check(tmp_path, {"quant_method": "awq"}, packages=(), npus_per_node=1)
    assert not c.ok and c.message.count("; install it there") == 1 and "awq" in c.message and "NPU" in c.message
    assert "\n" not in c.message


# --------------------------------------------------------------------------- memory plan and estimate

def test_plan_and_estimate_price_the_4bit_base():
    shape = shape_from_config(QWEN25_7B)
    job = load_job(ROOT / "jobs" / "qwen2.5-7b-qlora-24g.yaml", load_settings()).job
    plan = plan_of(job, ROOT / "jobs")
    assert plan.method == "qlora" and plan.zero_stage is None and plan.lora_r == 16
    q, lora = estimate(shape, plan), estimate(shape, Plan(**{**plan.__dict__, "method": "lora"}))
    assert q.weights < 0.45 * lora.weights and q.total < 24 < lora.total
    assert q.as_dict()["plan"]["method"] == "qlora"
    assert fixes(shape, lora.plan, 24, 8)[-1] == "method: qlora (the base in 4-bit; ~19 GiB)"
    assert not any("qlora" in f for f in fixes(shape, lora.plan, 24, 8, qlora_ok=False))
    many = job.model_copy(deep=True)
    many.resources.gpus_per_node = 2
    assert plan_of(many, ROOT / "jobs").zero_stage is None   # DDP, not DeepSpeed's ZeRO-0 engine


# --------------------------------------------------------------------------- the worker, in-process

def need_bitsandbytes() -> None:
    """bitsandbytes is part of the newest lane (scripts/setup): missing under CI=true is a failure."""
    if importlib.util.find_spec("bitsandbytes") is None:
        if IN_CI:
            pytest.fail("bitsandbytes is not installed (CI=true: scripts/setup installs hpcft[qlora])")
        pytest.skip("bitsandbytes not installed (pip install 'hpcft[qlora]')")


@pytest.mark.slow   # not `worker`: the floor lane has no bitsandbytes (hpcft[qlora] is the newest lane's)
@pytest.mark.parametrize("spec", [QuantizationSpec(), QuantizationSpec(bits=8)], ids=["nf4", "int8"])
def test_tiny_llama_loads_quantized_and_its_adapter_learns(tmp_path, spec):
    need_bitsandbytes()
    import torch
    from peft import LoraConfig, get_peft_model

    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.worker.engines.native import qlora as wq
    from hpcft.worker.engines.native.llm_model import load_model

    repo = make_tiny_llama(tmp_path / "llama", decoys=False)

    class Args:
        device = torch.device("cpu")

    model = load_model(repo, dtype=torch.float32, quantization=wq.bnb_config(spec, "fp32"),
                       device_map=wq.device_map(Args()))
    s = wq.summary(model, spec, "fp32")
    assert s["bits"] == spec.bits and s["quantized_layers"] == 14 and s["quantized_params"] == 73728
    assert s["bytes_per_quantized_param"] == (0.5 if spec.bits == 4 else 1.0)
    model = get_peft_model(wq.prepare(model, True), LoraConfig(task_type="CAUSAL_LM", r=8, target_modules="all-linear"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    torch.manual_seed(0)
    x = torch.randint(0, 50, (4, 32))
    losses = []
    for _ in range(4):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
