"""The LLM memory pre-flight: the estimate held against measured peaks (tests/data), parameter
counts against published ones, ZeRO model states against DeepSpeed's own estimator, the eight
bugs of issue 18 as regressions, host memory, device memory from what sites write; `hpcft
check` on the dev Slurm refuses then accepts."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from hpcft.cluster.slurm import Node, Partition, parse_gres_types
from hpcft.core.config import Settings, load_settings
from hpcft.core.errors import ConfigError
from hpcft.core.job_load import load_job
from hpcft.core.memory.estimate import GiB, Plan, estimate, model_states
from hpcft.core.memory.plan import plan_of
from hpcft.core.memory.shape import ModelShapeError, shape_from_config
from hpcft.core.store import Cache
from hpcft.preflight.checks import ClusterView, Preflight
from hpcft.preflight.devices import device_memory, from_name, parse_size_gib
from hpcft.preflight.memcheck import host_memory, memory
from hpcft.stage.layout import register_local

sys.path.insert(0, str(Path(__file__).parent / "data"))
from memory_measured import IN_SCOPE, MEASURED, outside  # noqa: E402
from published_configs import PUBLISHED  # noqa: E402

# Llama-3-8B-Instruct's config.json (the fields the estimate reads)
LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False, "model_type": "llama", "torch_dtype": "bfloat16"}
LLAMA2_70B = next(cfg for name, _, cfg in PUBLISHED if name == "meta-llama/Llama-2-70b-hf")
# The rows of what hpcft runs that the estimate stays below 0.95 of, each with what it misses.
# A new one fails the test: it is either a transcription to check or a term the estimate lacks.
KNOWN_BELOW = {
    "qwen-7b-chat LoRA r 8 (c_attn), bf16, 2048 tokens":
        "ms-swift's max_memory_reserved on variable-length data without expandable segments (which hpcft's "
        "sbatch turns on); Qwen's own table has the same model at 22.2 GiB",
    "ms-swift Qwen2.5-7B-Instruct LoRA r 8, DDP on 2, max_length 2048 (self-cognition, short)":
        "the same: 27.5 GiB reserved where the same script without DDP and ZeRO-2 read 18-20.5",
    "Llama-2-70B LoRA r 8 all-linear, ZeRO-3 on 8 H100, batch 8 x 2048 packed":
        "a whole-GPU reading (nvidia-smi) of a run without expandable segments; ZeRO-3's re-gathered layer "
        "(1.7 GB at 70B) above the largest module it keeps: 0.84, not verified on a GPU here",
    "ms-swift Qwen2.5-7B-Instruct LoRA r 8, ZeRO-3 on 2, max_length 2048 (self-cognition, short)":
        "0.93 on short data: 16 GiB reserved is the whole 14.2 GiB bf16 model plus context, as if each GPU "
        "loaded it before DeepSpeed sharded it; hpcft's worker loads inside zero.Init",
    "Qwen-1.8B LoRA, 4096 tokens, 1 GPU(s)":
        "0.947: the table's own step from 2k to 4k tokens (+4.9 GiB) is as large as from 4k to 8k (+5.2); "
        "activations are linear in tokens (traced)",
}


def _ratio(r: dict) -> float:
    est = estimate(shape_from_config(r["config"]), Plan(**r["plan"]))
    return est.as_measured(r.get("measured_as", "device")) / r["measured_gib"]


def test_estimate_against_measured_peaks():
    """The targets on the rows that measure what hpcft runs; the rest (4-bit bases, LitGPT) are
    held only to a median, and printed by benchmarks/bench_memory.py beside them."""
    ratios = {r["case"]: _ratio(r) for r in IN_SCOPE}
    assert len(ratios) == len(IN_SCOPE) >= 50 and len(MEASURED) >= 115
    below = {case for case, x in ratios.items() if x < 0.95}
    assert below == set(KNOWN_BELOW), {c: round(ratios[c], 2) for c in below ^ set(KNOWN_BELOW)}
    within = [x for x in ratios.values() if 0.85 <= x <= 1.15]
    assert len(within) >= 0.85 * len(ratios), sorted(round(x, 2) for x in ratios.values())
    assert max(ratios.values()) <= 1.25   # the worst overestimate: Qwen-1.8B full at 8192 tokens
    assert statistics.median(abs(x - 1) for x in ratios.values()) <= 0.09
    rest = [_ratio(r) for r in MEASURED if outside(r)]
    assert statistics.median(abs(x - 1) for x in rest) <= 0.15
    for r in MEASURED:
        assert r["source"].startswith("https://"), r["case"]


@pytest.mark.parametrize("name,published,cfg", PUBLISHED, ids=[p[0].split(" ")[0] for p in PUBLISHED])
def test_parameter_count_within_two_percent_of_published(name, published, cfg):
    assert shape_from_config(cfg).params == pytest.approx(published, rel=0.02)


def test_every_model_type_hpcft_sizes_has_a_published_count():
    from hpcft.core.memory.shape import FAMILIES

    assert set(FAMILIES) == {cfg["model_type"] for _, _, cfg in PUBLISHED}


def test_zero_model_states_never_below_deepspeeds_estimator():
    """DeepSpeed's own estimate_zero2/3_model_states_mem_needs, computed by the installed
    deepspeed in a subprocess (its import is heavy and sets up accelerators)."""
    shape = shape_from_config(LLAMA2_70B)
    cases = [(stage, gpus, nodes, off) for stage in (2, 3) for gpus, nodes in ((1, 1), (8, 1), (8, 4))
             for off in (False, True)]
    code = f"""
import json
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as z3
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as z2
out = []
for stage, gpus, nodes, off in {cases!r}:
    if stage == 2:
        cpu, gpu = z2({shape.params}, gpus, nodes, cpu_offload=off)
    else:
        cpu, gpu, _ = z3({shape.params}, {shape.largest_module_params}, gpus, nodes, cpu_offload=off,
                         cpu_offload_params=off)
    out.append([cpu, gpu])
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for (stage, gpus, nodes, off), (cpu, gpu) in zip(cases, theirs):
        plan = Plan(method="full", zero_stage=stage, world_size=gpus * nodes, per_node=gpus, offload=off,
                    offload_params=off and stage == 3)
        w, g, o, _ = model_states(shape, plan)
        assert w + g + o >= gpu * 0.999, (stage, gpus, nodes, off, (w + g + o) / GiB, gpu / GiB)
        if off:  # the offloaded states on the host: DeepSpeed's figure per node
            assert estimate(shape, plan).host["offload"] * GiB >= cpu * 0.999, (stage, gpus, nodes)


# --------------------------------------------------------------------------- the shape from config.json

@pytest.mark.parametrize("cfg,expect", [
    ([{"hidden_size": 4096}], "is a JSON list, not an object"),                                   # bug 3
    ({**LLAMA3_8B, "num_attention_heads": {"value": 32}}, "num_attention_heads is {'value': 32}"),  # bug 3
    ({**LLAMA3_8B, "hidden_size": "4096"}, "hidden_size is '4096', expected a whole number"),
    ({**LLAMA3_8B, "num_hidden_layers": -8}, "num_hidden_layers is -8, expected a positive number"),  # bug 4
    ({**LLAMA3_8B, "num_hidden_layers": 0}, "num_hidden_layers is 0, expected a positive number"),    # bug 4
    ({k: v for k, v in LLAMA3_8B.items() if k != "num_attention_heads"}, "lacks num_attention_heads"),
    ({k: v for k, v in LLAMA3_8B.items() if k != "vocab_size"}, "lacks vocab_size"),
    ({k: v for k, v in LLAMA3_8B.items() if k != "intermediate_size"}, "lacks intermediate_size"),
    ({**LLAMA3_8B, "model_type": "gpt2"}, "model_type 'gpt2' is not one hpcft can size"),
    ({"hidden_size": 64, "num_hidden_layers": 2}, "model_type None is not one hpcft can size"),
])
def test_bad_configs_are_refused_by_name(cfg, expect):
    with pytest.raises(ModelShapeError, match=None) as err:
        shape_from_config(cfg)
    assert expect in str(err.value)


def test_families_read_their_own_fields():
    by_name = {name.split(" ")[0]: shape_from_config(cfg) for name, _, cfg in PUBLISHED}
    glm = by_name["THUDM/glm-4-9b-chat"]      # chatglm's ffn_hidden_size, num_layers, multi_query_group_num
    assert (glm.layers, glm.intermediate, glm.kv_heads, glm.vocab) == (40, 13696, 2, 151552)
    v2 = by_name["deepseek-ai/DeepSeek-V2-Lite"]   # n_routed_experts, first_k_dense_replace
    assert (v2.experts, v2.moe_layers, v2.active) == (64, 26, 6)
    moe = by_name["Qwen/Qwen1.5-MoE-A2.7B"]      # the shared expert is counted and passed through
    assert moe.shared_intermediate == 5632 and moe.active_intermediate == 4 * 1408 + 5632


# --------------------------------------------------------------------------- device memory

def test_device_memory_from_what_sites_write():
    assert parse_size_gib("80G") == 80 and parse_size_gib("64GB") == 64 and parse_size_gib("81920M") == 80
    for name, gib in [("a100-sxm4-80gb", 80), ("nvidia_a100-sxm4-80gb", 80), ("nvidia_a100-pcie-40gb", 40),
                      ("h100_80gb_hbm3", 80), ("nvidia_h800", 80), ("h200", 141), ("910b3", 64), ("910b4", 32)]:
        assert from_name(name) == gib, name
    for name in ("a100", "a800", "910b", "v100", "mystery"):   # bug 8: the size is not in the name
        assert from_name(name) is None, name
    assert device_memory({"gpu80": "80G"}, "gpu80", [], [])[0] == 80
    assert device_memory({"a100": "40G"}, "gpu", ["a100"], [])[0] == 40
    assert device_memory({}, "gpu", [], ["gpumem80g"])[0] == 80
    # bug 5: a partition mixing types gets the smallest, whatever the order
    assert device_memory({"a100": "80G", "v100": "16G"}, "gpu", ["a100", "v100"], [])[0] == 16
    assert device_memory({"a100": "80G", "v100": "16G"}, "gpu", ["v100", "a100"], [])[0] == 16
    assert device_memory({}, "gpu", ["h100_80gb_hbm3", "a100"], [])[0] is None   # one unknown: no guess
    # bug 6: host-memory features are not device memory
    for feature in ("mem256g", "bigmem-1024gb", "highmem_512g"):
        assert device_memory({}, "gpu", [], [feature]) == (None, ""), feature
    assert parse_gres_types("gpu:a100:4(S:0-1),gpu:v100:2,npu:2") == {"gpu": ["a100", "v100"]}


def test_device_memory_in_the_cluster_config_is_validated(tmp_path):  # bug 7
    path = tmp_path / "config.yaml"
    path.write_text("device_memory: {a100: 80 gigs, h100: 80G}\n")
    with pytest.raises(ConfigError) as err:
        load_settings([path])
    [line] = err.value.lines()
    assert "device_memory" in line and "'80 gigs' is not a size" in line and str(path) in line
    assert load_settings([tmp_path / "none.yaml"]).device_memory == {}


# --------------------------------------------------------------------------- plans and estimates

def test_zero_sharding_and_dense_baseline():
    shape = shape_from_config(LLAMA3_8B)
    assert shape.params == pytest.approx(8.03e9, rel=0.005)
    full = [estimate(shape, Plan(method="full", zero_stage=s, world_size=8, per_node=8)) for s in (0, 1, 2, 3)]
    assert full[3].total < full[2].total < full[1].total < full[0].total
    one = estimate(shape, Plan(method="full"))
    assert 130 <= one.total <= 160   # 18 B/param + activations
    lora = estimate(shape, Plan(method="lora"))
    assert lora.trainable == shape.lora_params(8) and 15 <= lora.total <= 25
    longer = estimate(shape, Plan(method="lora", batch_size=8, seq_len=4096))
    assert longer.activations > 20 * lora.activations


def test_preference_tuning_is_known_to_the_estimate():
    shape = shape_from_config(LLAMA3_8B)
    sft = estimate(shape, Plan(method="full", zero_stage=3, world_size=8, per_node=8))
    dpo = estimate(shape, Plan(method="full", task="dpo", zero_stage=3, world_size=8, per_node=8))
    assert dpo.reference == pytest.approx(2 * shape.params / 8 / GiB)   # frozen bf16 reference, sharded
    assert dpo.activations == pytest.approx(2 * sft.activations, rel=0.3)  # chosen + rejected
    lora_dpo = estimate(shape, Plan(method="lora", task="dpo"))
    assert lora_dpo.reference == 0          # the adapter disabled is the reference: no copy
    assert estimate(shape, Plan(method="full", task="orpo")).reference == 0   # reference-free


def test_host_memory_with_and_without_zero_init():
    shape = shape_from_config(LLAMA2_70B)
    base = dict(method="full", zero_stage=3, world_size=32, per_node=8)
    init = estimate(shape, Plan(**base)).host
    plain = estimate(shape, Plan(**base, zero_init=False)).host
    assert init["loading"] < 20 and plain["loading"] > 2000   # 8 ranks x 4 B x 69B x 1.5 without zero.Init
    off = estimate(shape, Plan(**base, offload=True, offload_params=True)).host
    assert off["offload"] > 400                               # 18 B/param over 4 nodes, x1.5
    assert off["ranks"] == pytest.approx(8 * 4.0)


# --------------------------------------------------------------------------- the rules

def _stage(cache_root: Path, tmp_path: Path, cfg: dict, name: str = "meta-llama/Meta-Llama-3-8B-Instruct",
           alias: str = "llama3-8b-instruct") -> None:
    folder = tmp_path / f"{alias}-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    register_local(Cache(cache_root), "model", name, folder, aliases=[alias])


def _job(tmp_path: Path, model: str = "llama3-8b-instruct", resources: dict | None = None, **train) -> dict:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    return {"name": "llm", "train": {"task": "causal-lm", "model": model, "dataset": str(data),
                                     "batch_size": 1, "max_seq_length": 1024, **train},
            "resources": resources or {"partition": "gpu", "gpus_per_node": 1}}


def _load(settings, doc):
    return load_job(None, settings, text=yaml.safe_dump(doc)).job


def memory_check(job, settings, view, partition, base_dir, rule=memory):
    [check] = rule(Preflight(job, settings, base_dir, "slurm", view, partition))
    return check


def _view(per_node: int = 8, types=("a100",), features=(), mem_mb: int = 512000) -> ClusterView:
    nodes = {f"g{i}": Node(f"g{i}", "IDLE", 64, mem_mb, {"gpu": per_node}, ["gpu"], {"gpu": list(types)},
                           list(features)) for i in range(4)}
    part = Partition("gpu", list(nodes), None, False, "UP", 4)
    return ClusterView({"gpu": part}, nodes)


def test_refuses_8b_full_on_one_80g_gpu_naming_fixes_and_accepts_lora(hpcft_home, tmp_path):
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings(device_memory={"a100": "80G"})
    full = _load(settings, _job(tmp_path, method="full"))
    check = memory_check(full, settings, _view(), "gpu", tmp_path)
    assert not check.ok
    msg = check.message
    assert "8B full fine-tuning needs ~" in msg and "at ZeRO-0" in msg and "have 80 GiB" in msg
    assert "method: lora" in msg and "deepspeed: 3 over 2 devices" in msg and "offload: true" in msg
    ok = memory_check(_load(settings, _job(tmp_path, method="lora")), settings, _view(), "gpu", tmp_path)
    assert ok.ok and "fits 80 GiB (device_memory[a100] (gres type))" in ok.message
    small = memory_check(full, Settings(device_memory={"a100": "12G"}), _view(1), "gpu", tmp_path)
    assert not small.ok and "nodes: " in small.message
    unknown = memory_check(full, Settings(), _view(), "gpu", tmp_path)   # nothing known: printed, not refused
    assert unknown.ok and "unknown" in unknown.message and "GiB per device" in unknown.message


def test_an_allocator_config_without_expandable_segments_is_named(hpcft_home, tmp_path):
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings(device_memory={"a100": "80G"})
    doc = _job(tmp_path, method="lora")
    plain = memory_check(_load(settings, doc), settings, _view(), "gpu", tmp_path)
    assert plain.ok and "expandable" not in plain.message
    for value, named in (("max_split_size_mb:128", True), ("expandable_segments:True", False),
                         ("expandable_segments: true,max_split_size_mb:64", False)):
        check = memory_check(_load(settings, {**doc, "env": {"vars": {"PYTORCH_CUDA_ALLOC_CONF": value}}}),
                             settings, _view(), "gpu", tmp_path)
        assert check.ok and (f"PYTORCH_CUDA_ALLOC_CONF={value} without expandable_segments" in check.message) == named


def test_deepspeed_on_one_device_is_counted(hpcft_home, tmp_path):   # bug 1
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings(device_memory={"a100": "80G"})
    job = _load(settings, _job(tmp_path, method="full", deepspeed={"stage": 3, "offload": True}))
    plan = plan_of(job, tmp_path)
    assert (plan.zero_stage, plan.offload, plan.offload_params, plan.world_size) == (3, True, True, 1)
    check = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert "at ZeRO-0" not in check.message and "ZeRO-3+offload" in check.message
    assert "deepspeed: {stage: 3, offload: true}" not in check.message


def test_offload_device_none_is_not_offload(hpcft_home, tmp_path):   # bug 2
    _stage(hpcft_home / "cache", tmp_path, LLAMA2_70B, "meta-llama/Llama-2-70b-hf", "llama2-70b")
    ds = tmp_path / "ds_config_zero3.json"   # Qwen's finetune/ds_config_zero3.json writes it so
    ds.write_text(json.dumps({"zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "none", "pin_memory": True},
        "offload_param": {"device": "none", "pin_memory": True}},
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}))
    settings = Settings(device_memory={"a100": "80G"})
    job = _load(settings, _job(tmp_path, "llama2-70b", {"partition": "gpu", "gpus_per_node": 8},
                               method="full", deepspeed=str(ds)))
    plan = plan_of(job, tmp_path)
    assert (plan.zero_stage, plan.offload, plan.offload_params) == (3, False, False)
    check = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert not check.ok and "at ZeRO-3" in check.message, check.message
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                                    "offload_param": {"device": "cpu"}}}))
    assert plan_of(job, tmp_path).offload_params


@pytest.mark.parametrize("cfg,expect", [
    ([1, 2], "config.json is a JSON list"), ({**LLAMA3_8B, "num_hidden_layers": -8}, "expected a positive"),
    ({**LLAMA3_8B, "model_type": "gpt2"}, "model_type 'gpt2'"),
])
def test_bad_config_gives_no_estimate_not_a_traceback(hpcft_home, tmp_path, cfg, expect):   # bugs 3, 4
    _stage(hpcft_home / "cache", tmp_path, cfg)
    settings = Settings(device_memory={"a100": "80G"})
    check = memory_check(_load(settings, _job(tmp_path)), settings, _view(), "gpu", tmp_path)
    assert check.ok and check.message.startswith("no estimate:") and expect in check.message
    assert "GiB" not in check.message


def test_mixed_partition_refuses_on_the_smallest_gpu(hpcft_home, tmp_path):   # bug 5
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings(device_memory={"a100": "80G", "v100": "16G"})
    job = _load(settings, _job(tmp_path, method="lora", max_seq_length=4096))
    check = memory_check(job, settings, _view(types=("a100", "v100")), "gpu", tmp_path)
    assert not check.ok and "have 16 GiB" in check.message and "smallest of 2" in check.message


def test_host_memory_refused_with_the_fix(hpcft_home, tmp_path):
    _stage(hpcft_home / "cache", tmp_path, LLAMA2_70B, "meta-llama/Llama-2-70b-hf", "llama2-70b")
    settings = Settings(device_memory={"a100": "80G"})
    res = {"partition": "gpu", "gpus_per_node": 8, "nodes": 4, "mem": "64G"}
    job = _load(settings, _job(tmp_path, "llama2-70b", res, method="full",
                               deepspeed={"stage": 3, "offload": True}))
    check = memory_check(job, settings, _view(mem_mb=1024 * 1024), "gpu", tmp_path, rule=host_memory)
    assert not check.ok and "mem: 64G gives 64 GiB" in check.message
    assert "use mem: " in check.message and "deepspeed without offload" in check.message
    res["mem"] = "900G"
    roomy = memory_check(_load(settings, _job(tmp_path, "llama2-70b", res, method="full",
                                              deepspeed={"stage": 3, "offload": True})),
                         settings, _view(mem_mb=1024 * 1024), "gpu", tmp_path, rule=host_memory)
    assert roomy.ok and "per node" in roomy.message
    z2 = _load(settings, _job(tmp_path, "llama2-70b", {"partition": "gpu", "gpus_per_node": 8, "nodes": 4},
                              method="full", deepspeed=2))   # 8 ranks each load 69B before ZeRO-2 shards
    refused = memory_check(z2, settings, _view(mem_mb=512 * 1024), "gpu", tmp_path, rule=host_memory)
    assert not refused.ok and "RealMemory" in refused.message and "deepspeed: 3 (zero.Init" in refused.message


def test_llm_fields_are_validated_per_task(tmp_path):
    settings = Settings()
    bad = {"name": "x", "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc", "method": "lora"}}
    with pytest.raises(ConfigError, match="only for"):
        load_job(None, settings, text=yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="method is full"):
        load_job(None, settings, text=yaml.safe_dump(_job(tmp_path, method="full", lora={"r": 4})))


@pytest.mark.slurm
def test_hpcft_check_on_slurm_refuses_then_accepts(slurm, hpcft_home, run_hpcft, tmp_path):
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
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
    # LoRA of the 8B fits the GPU, but its bf16 weights pass through host memory while loading:
    # more than the dev node's RealMemory (80 % of this VM's RAM); a 0.5B model fits both
    job["train"]["method"] = "lora"
    path.write_text(yaml.safe_dump(job))
    host = run_hpcft("check", str(path))
    assert "✓ memory: ~" in host.stdout and "fits 80 GiB" in host.stdout, host.stdout
    small = next(cfg for name, _, cfg in PUBLISHED if name == "Qwen/Qwen2.5-0.5B-Instruct")
    _stage(hpcft_home / "cache", tmp_path, small, "Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b")
    job["train"]["model"] = "qwen2.5-0.5b"
    path.write_text(yaml.safe_dump(job))
    ok = run_hpcft("check", "--json", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    jsonschema.validate(doc, json.loads((Path(__file__).parent / "schemas" / "check.schema.json").read_text()))
    assert any(c["name"] == "memory" and "fits 80 GiB" in c["message"] for c in doc["checks"])
    est = doc["estimate"]
    assert est["available"] and 3 < est["device_gib"] < 10 and est["node_gib"] > 4
    assert set(est["device_parts_gib"]) == {"weights", "gradients", "optimizer", "activations", "reference", "step"}
    assert doc["placement"] is None
    bad = Path(os.environ["HPCFT_CONFIG"])
    bad.write_text("device_memory: {gpu: 80 gigs}\n")   # bug 7: one line, exit 2, no traceback
    proc = run_hpcft("check", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "'80 gigs' is not a size" in proc.stderr


# --------------------------------------------------------------------------- a run's estimate vs its peaks

def test_a_runs_peaks_against_its_estimate(tmp_path):
    from hpcft.runs.memory import describe, memory_vs_estimate, read_estimate

    est = {"available": True, "device_gib": 20.0, "node_gib": 10.0, "plan": {"seq_len": 2048}, "partition": "gpu"}
    metrics = {"memory": {"peak_device_allocated_mb": 16384.0, "peak_device_reserved_mb": 18432.0},
               "ranks": [{"host": "g1", "host_rss_mb": 3072.0}, {"host": "g1", "host_rss_mb": 3072.0},
                         {"host": "g2", "host_rss_mb": 2048.0}, {"host": "g2", "host_rss_mb": "lots"}]}
    m = memory_vs_estimate(est, metrics)
    assert (m["peak_device_reserved_gib"], m["device_ratio"]) == (18.0, 0.9)   # reserved: what runs out
    assert (m["peak_node_host_gib"], m["node_ratio"]) == (6.0, 0.6)            # the two ranks on g1
    lines = describe(m)
    assert lines[0] == "device 18 GiB reserved at peak (16 allocated) against ~20 estimated at max_seq_length 2048: 0.9x"
    assert lines[1] == "host 6 GiB per node at peak against ~10 estimated: 0.6x"
    cpu = memory_vs_estimate(est, {"memory": {"peak_device_allocated_mb": None}, "ranks": []})
    assert cpu["device_ratio"] is None and describe(cpu) == [
        "device: ~20 GiB estimated at max_seq_length 2048 (no device peak recorded)"]
    assert memory_vs_estimate(None, metrics) is None
    for hostile in ("[1, 2]", "not json", '{"available": false}', '"text"'):   # a run folder is shared ground
        (tmp_path / "memory-estimate.json").write_text(hostile)
        assert read_estimate(tmp_path) is None
    (tmp_path / "memory-estimate.json").write_text('{"available": true, "device_gib": "x", "plan": 3}')
    odd = memory_vs_estimate(read_estimate(tmp_path), {"memory": [], "ranks": {}})
    assert odd["estimate_device_gib"] is None and odd["device_ratio"] is None and describe(odd)


def test_foreach_adamw_step_is_counted_on_npus(hpcft_home, tmp_path):
    """torch's multi-tensor AdamW (the NPU path; CUDA runs the fused kernel) keeps a temporary of the
    second moments' size during the step, when the activations are already freed."""
    shape = shape_from_config(LLAMA3_8B)
    fused = estimate(shape, Plan(method="full", seq_len=512))
    foreach = estimate(shape, Plan(method="full", seq_len=512, optimizer="foreach"))
    assert fused.step == 0 and foreach.step == pytest.approx(4 * shape.params / 2 ** 30)
    assert foreach.allocated == pytest.approx(fused.allocated - fused.activations + foreach.step)
    assert "optimizer step" in foreach.summary() and "step" in foreach.as_dict()["device_parts_gib"]
    zero = estimate(shape, Plan(method="full", seq_len=512, optimizer="foreach", zero_stage=2, world_size=8))
    assert zero.step == 0                                   # DeepSpeed steps with its own fused Adam
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings()
    npu = _load(settings, _job(tmp_path, method="full", resources={"partition": "npu", "npus_per_node": 1}))
    gpu = _load(settings, _job(tmp_path, method="full"))
    assert plan_of(npu, tmp_path).optimizer == "foreach" and plan_of(gpu, tmp_path).optimizer == "fused"


def test_a_job_that_already_ran_within_the_device_is_not_refused(hpcft_home, tmp_path):
    """The site's own measurement beats the arithmetic: a run of the same model, data and plan
    that peaked within the device lets the job through; a larger or a foreign one does not."""
    from dataclasses import asdict


    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings(device_memory={"a100": "80G"})
    job = _load(settings, _job(tmp_path, method="full"))
    plan = asdict(plan_of(job, tmp_path))
    refused = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert not refused.ok and "measured" not in refused.message

    def earlier(name: str, reserved_mb, estimate_doc=None) -> None:
        _earlier_run(settings, job, plan, name, {"peak_device_reserved_mb": reserved_mb}, estimate_doc)

    earlier("llm-001", 79 * 1024)                 # 79 + the 2 GiB context: still not within 80
    assert not memory_check(job, settings, _view(), "gpu", tmp_path).ok
    earlier("llm-002", 70 * 1024)
    earlier("llm-003", 60 * 1024, {**json.loads((settings.runs / "llm-002" / "memory-estimate.json").read_text()),
                                   "plan": {**plan, "seq_len": 512}})     # another plan: not this job's
    earlier("llm-004", 10, [1, 2])                # a torn or hostile file is ignored
    check = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert not check.ok and "79 GiB reserved at the peak of run llm-001 (the largest of 2 runs)" in check.message
    (settings.runs / "llm-001" / "metrics.json").write_text("{")   # the 79 GiB run's record is torn
    check = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert check.ok, check.message
    assert "but the same job ran within it; measured: 70 GiB reserved at the peak of run llm-002" in check.message


def _earlier_run(settings, job, plan: dict, name: str, memory: dict, estimate_doc=None) -> None:
    """A finished run of ``job`` in the index with its estimate and the peaks it measured."""
    from hpcft.runs.index import RunRecord, RunStore
    from hpcft.runs.memory import dataset_key

    run_dir = settings.runs / name
    run_dir.mkdir(parents=True)
    doc = estimate_doc if estimate_doc is not None else {
        "available": True, "device_gib": 146.0, "node_gib": 30.0, "plan": plan, "partition": "h200",
        "model": job.train.model, "dataset": dataset_key(job.train.dataset)}
    (run_dir / "memory-estimate.json").write_text(json.dumps(doc))
    (run_dir / "metrics.json").write_text(json.dumps({"memory": memory}))
    RunStore(settings.runs).add(RunRecord(run_id=name, name="llm", run_dir=str(run_dir), job_file=None,
                                          kind="train", executor="slurm", submitted_at="2026-12-03T00:00:00",
                                          job_id=name[-3:]))


def test_what_earlier_runs_allocated_outranks_an_estimate_that_fits(hpcft_home, tmp_path):
    """The other way round: the estimate fits, but a run of the same plan on a larger device
    allocated more than this one holds. Only the allocated peak refuses (a reserved peak on a
    larger device can be cache the allocator would free under pressure); placement follows both."""
    from dataclasses import asdict

    from hpcft.preflight import placement
    from hpcft.runs.memory import measured_peaks

    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    settings = Settings(device_memory={"a100": "40G"})
    job = _load(settings, _job(tmp_path, method="lora"))
    plan = plan_of(job, tmp_path)
    est = estimate(shape_from_config(LLAMA3_8B), plan)
    assert est.total < 40 and memory_check(job, settings, _view(), "gpu", tmp_path).ok
    _earlier_run(settings, job, asdict(plan), "llm-001", {"peak_device_reserved_mb": 45 * 1024})
    check = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert check.ok and "measured: 45 GiB reserved at the peak of run llm-001" in check.message   # reserved only
    _earlier_run(settings, job, asdict(plan), "llm-002", {"peak_device_reserved_mb": 44 * 1024,
                                                          "peak_device_allocated_mb": 39 * 1024})
    check = memory_check(job, settings, _view(), "gpu", tmp_path)
    assert not check.ok, check.message
    assert "by the estimate, but run llm-002 of the same model, data and plan allocated 39 GiB on 'h200' " \
           "(+2 GiB context: above 40)" in check.message
    assert "counting the 2.02x the estimate fell short, use max_seq_length: 512" in check.message

    seen = measured_peaks(settings.runs, job.train.model, job.train.dataset)
    shape = shape_from_config(LLAMA3_8B)
    sized = [(shape, plan, seen)]
    one = placement._candidate("a100", 1, 1, "job", sized, 40.0, None, 3600)
    assert not one.fits and one.why == "measured: run llm-002 allocated 39 GiB (+2 GiB context)"
    roomy = placement._candidate("h200", 1, 1, "job", sized, 141.0, None, 3600)
    assert roomy.fits and roomy.why == ""
    two = placement._candidate("a100", 2, 1, "job", sized, 40.0, None, 3600)
    assert two.fits   # two devices are another plan: no run measured it

    tight = est.total - 1   # the estimate refuses; the run that measured the plan within it decides
    _earlier_run(settings, job, asdict(plan), "llm-003", {"peak_device_reserved_mb": (tight - 3) * 1024})
    (settings.runs / "llm-001" / "metrics.json").write_text("[]")
    (settings.runs / "llm-002" / "metrics.json").write_text("[]")
    sized = [(shape, plan, measured_peaks(settings.runs, job.train.model, job.train.dataset))]
    within = placement._candidate("a100", 1, 1, "job", sized, tight, None, 3600)
    assert within.fits and "but ran within it: llm-003 measured" in within.why
    sweep = placement._candidate("a100", 1, 1, "job", [*sized, (shape, plan_of(_load(settings, _job(
        tmp_path, method="lora", max_seq_length=4096)), tmp_path), {})], tight, None, 3600)
    assert not sweep.fits   # a sweep's other point, never measured, still needs the estimate


# --------------------------------------------------------------------------- gradient checkpointing left to hpcft

def test_checkpointing_left_out_is_decided_from_the_estimate_against_free_memory(hpcft_home, tmp_path):
    from hpcft.core.memory.plan import SHARE, checkpointing

    model = tmp_path / "llama3-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA3_8B))
    settings = Settings()
    job = _load(settings, _job(tmp_path, max_seq_length=4096, batch_size=4))
    plan = plan_of(job, tmp_path)
    need = estimate(LLAMA3_8B_SHAPE := shape_from_config(LLAMA3_8B),
                    Plan(**{**plan.__dict__, "precision": "bf16", "gradient_checkpointing": False})).total
    with_it = estimate(LLAMA3_8B_SHAPE, Plan(**{**plan.__dict__, "precision": "bf16"})).total
    assert need > 1.5 * with_it                        # the activations are what checkpointing saves
    on, why = checkpointing(job, tmp_path, model, precision="bf16", free_gib=need / SHARE * 1.01)
    assert on is False and why.startswith(f"off: without it the estimate is {need:.1f} GiB"), why
    on, why = checkpointing(job, tmp_path, model, precision="bf16", free_gib=need / SHARE * 0.99)
    assert on is True and why.startswith("on: without it the estimate is") and "over 80%" in why, why
    on, why = checkpointing(job, tmp_path, model, precision="bf16", free_gib=None)
    assert on is True and "free memory is unknown" in why
    (model / "config.json").write_text("{not json")
    on, why = checkpointing(job, tmp_path, model, precision="bf16", free_gib=1e6)
    assert on is True and "no memory estimate for this model" in why
    for said in (True, False):   # what the job says is obeyed, whatever the memory
        job = _load(settings, _job(tmp_path, gradient_checkpointing=said))
        on, why = checkpointing(job, tmp_path, model, precision="bf16", free_gib=1e6 if said else 0.001)
        assert on is said and why.endswith(f"train.gradient_checkpointing: {str(said).lower()}")
