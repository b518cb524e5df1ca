"""The LLM memory pre-flight: calibration against LLaMA-Factory's hardware table, refusal of
a job that cannot fit (exit 2, fixes named), acceptance of one that does; `hpcft check` on
the dev Slurm prints the estimate either way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from hpcft.cluster.slurm import Node, Partition, parse_gres_types
from hpcft.core.config import Settings, load_settings
from hpcft.core.job import load_job
from hpcft.core.store import Cache
from hpcft.preflight.checks import ClusterView, Preflight
from hpcft.preflight.estimate import (
    LLAMA2_CONFIGS,
    LLAMA_FACTORY_TABLE,
    Plan,
    Shape,
    device_memory,
    estimate,
    parse_size_gib,
)
from hpcft.preflight.memcheck import memory
from hpcft.stage.layout import register_local

# Llama-3-8B-Instruct's config.json (the fields the estimate reads)
LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False, "model_type": "llama", "torch_dtype": "bfloat16"}
TOLERANCE = 0.20  # every LLaMA-Factory case within 20 %, 10 of 12 within 10 % (docs/llm.md lists each)


@pytest.mark.parametrize("size", ["7B", "13B", "70B"])
@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora"])
def test_estimate_matches_the_llama_factory_table(size, method):
    e = estimate(Shape.from_config(LLAMA2_CONFIGS[size]), Plan(method=method, batch_size=1, seq_len=1024))
    want = LLAMA_FACTORY_TABLE[method][size]
    assert abs(e.total - want) / want <= TOLERANCE, (size, method, round(e.total, 1), want)


def test_parameter_count_and_zero_sharding_follow_the_config():
    shape = Shape.from_config(LLAMA3_8B)
    assert shape.params == pytest.approx(8.03e9, rel=0.005)   # Llama-3-8B has 8.03B parameters
    full = [estimate(shape, Plan(method="full", zero_stage=s, world_size=8)) for s in (0, 1, 2, 3)]
    assert [round(e.optimizer, 1) for e in full] == [round(full[0].optimizer, 1),
                                                      *[round(full[0].optimizer / 8, 1)] * 3]
    assert full[2].gradients == pytest.approx(full[0].gradients / 8) and full[3].weights == pytest.approx(
        full[0].weights / 8)
    assert full[3].total < full[2].total < full[1].total < full[0].total
    one = estimate(shape, Plan(method="full"))
    assert 125 <= one.total <= 160  # the issue says "~130 GB"; LLaMA-Factory's 7B row scales to ~137 GB
    lora = estimate(shape, Plan(method="lora"))
    assert lora.trainable == shape.lora_params(8) and 15 <= lora.total <= 25
    longer = estimate(shape, Plan(method="lora", batch_size=8, seq_len=4096))
    assert longer.activations > 20 * lora.activations


def test_device_memory_from_config_gres_type_features_or_known_names():
    assert parse_size_gib("80G") == 80 and parse_size_gib("64GB") == 64 and parse_size_gib("81920M") == 80
    assert device_memory({"gpu80": "80G"}, "gpu80", [], [])[0] == 80
    assert device_memory({"a100": "40G"}, "gpu", ["a100"], [])[0] == 40
    assert device_memory({}, "gpu", [], ["gpumem80g"])[0] == 80
    assert device_memory({}, "npu", ["910b"], [])[0] == 64
    assert device_memory({}, "gpu", ["a100"], [])[0] is None   # 40 or 80 GB: not guessed
    assert parse_gres_types("gpu:a100:4(S:0-1),gpu:v100:2,npu:2") == {"gpu": ["a100", "v100"]}


def _stage_8b(cache_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llama3-8b-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
    register_local(Cache(cache_root), "model", "meta-llama/Meta-Llama-3-8B-Instruct", folder,
                   aliases=["llama3-8b-instruct"])


def _job(tmp_path: Path, **train) -> dict:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    return {"name": "llm", "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data),
                                     "batch_size": 1, "max_seq_length": 1024, **train},
            "resources": {"partition": "gpu", "gpus_per_node": 1}}


def memory_check(job, settings, view, partition, base_dir):
    [check] = memory(Preflight(job, settings, base_dir, "slurm", view, partition))
    return check


def _view(per_node: int = 8) -> ClusterView:
    nodes = {f"g{i}": Node(f"g{i}", "IDLE", 64, 512000, {"gpu": per_node}, ["a100"], {"gpu": ["a100"]}, [])
             for i in range(4)}
    part = Partition("gpu", list(nodes), None, False, "UP", 4)
    return ClusterView({"gpu": part}, nodes)


def test_refuses_8b_full_on_one_80g_gpu_naming_fixes_and_accepts_lora(hpcft_home, tmp_path):
    _stage_8b(hpcft_home / "cache", tmp_path)
    settings = Settings(device_memory={"a100": "80G"})
    full = load_job(None, settings, text=yaml.safe_dump(_job(tmp_path, method="full"))).job
    check = memory_check(full, settings, _view(), "gpu", tmp_path)
    assert not check.ok
    msg = check.message
    assert "8B full fine-tuning needs ~" in msg and "at ZeRO-0" in msg and "have 80 GiB" in msg
    assert "method: lora" in msg and "deepspeed: 3 over 2 devices" in msg and "offload: true" in msg
    lora = load_job(None, settings, text=yaml.safe_dump(_job(tmp_path, method="lora"))).job
    ok = memory_check(lora, settings, _view(), "gpu", tmp_path)
    assert ok.ok and "fits 80 GiB (device_memory[a100] (gres type))" in ok.message
    # across nodes when one node's GPUs are not enough
    big = load_job(None, settings, text=yaml.safe_dump(_job(tmp_path, method="full", deepspeed=3))).job
    assert "nodes: " not in memory_check(big, settings, _view(8), "gpu", tmp_path).message
    small = memory_check(full, Settings(device_memory={"a100": "12G"}), _view(1), "gpu", tmp_path)
    assert not small.ok and "nodes: " in small.message
    # no device memory known: the estimate, not a refusal
    unknown = memory_check(full, Settings(), _view(), "gpu", tmp_path)
    assert unknown.ok and "unknown" in unknown.message and "GiB per device" in unknown.message


def test_llm_fields_are_validated_per_task(tmp_path):
    from hpcft.core.errors import ConfigError

    settings = Settings()
    bad = {"name": "x", "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc", "method": "lora"}}
    with pytest.raises(ConfigError, match="only for task: causal-lm"):
        load_job(None, settings, text=yaml.safe_dump(bad))
    bad2 = _job(tmp_path, metric="accuracy")
    with pytest.raises(ConfigError, match="only for task: sequence-classification"):
        load_job(None, settings, text=yaml.safe_dump(bad2))
    bad3 = _job(tmp_path, method="full", lora={"r": 4})
    with pytest.raises(ConfigError, match="method is full"):
        load_job(None, settings, text=yaml.safe_dump(bad3))


@pytest.mark.slurm
def test_hpcft_check_on_slurm_refuses_then_accepts(slurm, hpcft_home, run_hpcft, tmp_path):
    _stage_8b(hpcft_home / "cache", tmp_path)
    Path(os.environ["HPCFT_CONFIG"]).write_text(yaml.safe_dump({"device_memory": {"gpu": "80G"}}))
    job = _job(tmp_path, method="full")
    job["resources"] = {"partition": "gpu", "gpus_per_node": 1, "time": "00:10:00"}
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = run_hpcft("check", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("✗ memory"))
    assert "method: lora" in line and "deepspeed: 3 over 2 devices" in line
    sub = run_hpcft("submit", str(path))
    assert sub.returncode == 2 and "memory: 8B full fine-tuning needs" in sub.stderr
    assert not list((hpcft_home / "runs").glob("*-llm-*"))  # nothing queued, nothing half-written
    job["train"]["method"] = "lora"
    path.write_text(yaml.safe_dump(job))
    ok = run_hpcft("check", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert any(x.startswith("✓ memory: ~") and "fits 80 GiB" in x for x in ok.stdout.splitlines())
    assert load_settings().device_memory == {"gpu": "80G"}
