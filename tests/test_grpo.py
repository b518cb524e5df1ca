"""``task: grpo`` (issue 30): the built-in rewards, the schema with TRL's defaults, and the
pre-flight's refusals (each one line, exit 2, nothing queued); the worker's hash check of a
user reward file; and one short in-process run with a user reward and a KL term."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from devtools.hub.grpo_fixtures import write_grpo
from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama
from hpcft.core import rewards as rw
from hpcft.core.grpo import GrpoSpec, RewardSpec, batch_problem
from hpcft.core.job import TrainSpec

# --------------------------------------------------------------------------- the built-in rewards

def test_answer_numeric_grades_the_last_number_as_gsm8k_graders_do():
    answer = ["Natalia sold 48/2 = 24 clips in May ... #### 72"] * 6
    completions = ["She sold 24 in May, so 48 + 24 = 72", "The total is $72.", "<think>48+24</think> 72.",
                   "<answer>1,072</answer>", "72 or maybe 71", "no idea"]
    assert rw.answer_numeric(completions, answer=answer) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert rw.answer_numeric(["It is 3.50"], answer=[3.5]) == [1.0]
    assert rw.answer_numeric([[{"role": "assistant", "content": "= -4"}]], answer=["-4"]) == [1.0]  # messages form
    assert rw.last_number("1,234.50 and then $7.") == 7.0 and rw.reference_number("x #### 1,234") == 1234.0


def test_answer_match_format_and_length_rewards():
    assert rw.answer_match(["Paris", " Paris \n", "<think>hm</think>Paris", "paris", "<answer>Paris</answer>"],
                           answer=["Paris"] * 5) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert rw.think_format(["<think>a+b</think> 5", "<think></think>5", "5", "<think>x</think>"]) == \
        [1.0, 0.0, 0.0, 0.0]
    assert rw.length_penalty(["a", "b", "c"], completion_ids=[[1], [1] * 5, [1] * 20], max_completion_length=10) == \
        [-0.1, -0.5, -1.0]
    with pytest.raises(KeyError, match="'answer' column"):
        rw.answer_numeric(["5"])


# --------------------------------------------------------------------------- the schema

def _spec(**kw) -> TrainSpec:
    return TrainSpec(**{"task": "grpo", "model": "m", "dataset": "d.jsonl", "rewards": ["answer_numeric"], **kw})


def _error(**kw) -> str:
    with pytest.raises(ValidationError) as e:
        _spec(**kw)
    return str(e.value)


def test_grpo_defaults_are_trls_and_recorded():
    t = _spec()
    assert t.is_llm and not t.is_preference and t.learning_rate == 1e-5
    assert t.grpo == GrpoSpec() and (t.grpo.num_generations, t.grpo.max_completion_length, t.grpo.beta,
                                     t.grpo.loss_type, t.grpo.temperature, t.grpo.use_vllm) == (8, 512, 0.0, "dapo",
                                                                                               1.0, False)
    assert _spec(method="full").learning_rate == 1e-6   # TRL's GRPOConfig default
    r = _spec(rewards=["answer_numeric", {"name": "think_format", "weight": 0.5}, "my_rewards.py:score"]).rewards
    assert [(x.label, x.weight, x.file) for x in r] == [("answer_numeric", 1.0, None), ("think_format", 0.5, None),
                                                        ("score", 1.0, "my_rewards.py")]


@pytest.mark.parametrize("kw, message", [
    ({"rewards": ["answer_numberic"]}, "unknown reward 'answer_numberic' (did you mean 'answer_numeric'?)"),
    ({"rewards": None}, "task: grpo needs rewards:"),
    ({"rewards": ["think_format", {"name": "think_format", "weight": 2}]}, "'think_format' is listed twice"),
    ({"rewards": [{"function": "r.py"}]}, "expected file.py:function_name"),
    ({"rewards": [{"name": "think_format", "sha256": "0" * 64}]}, "the built-in 'think_format' has none"),
    ({"grpo": {"loss_type": "dappo"}}, "'dappo' is not a GRPO loss (did you mean 'dapo'?)"),
    ({"grpo": {"num_generations": 1}}, "greater than or equal to 2"),
    ({"grpo": {"max_completion_length": 256}, "max_seq_length": 256}, "leaves no room for the prompt"),
    ({"packing": True}, "packing: not for task: grpo"),
    ({"preference": {"beta": 0.1}}, "preference: not for task: grpo"),
])
def test_grpo_settings_are_checked(kw, message):
    assert message in _error(**kw)


def test_grpo_fields_on_another_task_are_refused():
    with pytest.raises(ValidationError, match="grpo, rewards: only for task: grpo"):
        TrainSpec(task="causal-lm", model="m", dataset="d", grpo={}, rewards=["think_format"])


def test_trls_batch_rule_counts_the_ranks():
    t = _spec(batch_size=4, grpo={"num_generations": 8})
    assert batch_problem(t, 2) is None and batch_problem(_spec(batch_size=8, grpo={"num_generations": 4}), 1) is None
    why = batch_problem(t, 1)
    assert why.startswith("grpo.num_generations 8 does not divide the generation batch 4 (batch_size 4 x 1 rank(s)")
    assert "eval batch" in batch_problem(_spec(batch_size=8, eval_batch_size=2, grpo={"num_generations": 4}), 1)


def test_a_reward_spec_reads_a_file_and_function_string():
    r = RewardSpec.model_validate("sub/my_rewards.py:exact_match")
    assert (r.function, r.file, r.func_name, r.label) == ("sub/my_rewards.py:exact_match", "sub/my_rewards.py",
                                                          "exact_match", "exact_match")


# --------------------------------------------------------------------------- the worker's hash check

def test_the_worker_runs_only_the_bytes_recorded_at_submit(tmp_path):
    from hpcft.core.errors import TrustError
    from hpcft.worker.engines.native.grpo_rewards import user_function
    from hpcft.worker.errors import DataFormatError

    f = tmp_path / "mine.py"
    f.write_text("def score(completions, **kw):\n    return [float(len(c) < 5) for c in completions]\n")
    r = RewardSpec(function=f"{f}:score", sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    assert user_function(r)(["ok", "too long"]) == [1.0, 0.0]
    f.write_text(f.read_text() + "import os\n")
    with pytest.raises(TrustError, match="changed since the job was submitted"):
        user_function(r)
    f.write_text("raise RuntimeError('boom')\n")
    r.sha256 = hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(DataFormatError, match="does not import: RuntimeError: boom"):
        user_function(r)


# --------------------------------------------------------------------------- refused before the queue

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("grpo") / "llama", decoys=False)


def _stage(tiny, home: Path) -> None:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])


def _job(tmp_path, name, **train) -> Path:
    job = {"name": name, "executor": "local",
           "train": {"task": "grpo", "model": "llama3-8b-instruct", "dataset": str(write_grpo(tmp_path / "g.jsonl")),
                     "batch_size": 8, "max_seq_length": 64, "grpo": {"num_generations": 4,
                                                                     "max_completion_length": 8},
                     "rewards": ["answer_numeric"], **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _refused(run_hpcft, path: Path, needle: str) -> None:
    proc = run_hpcft("submit", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    hits = [ln for ln in proc.stderr.splitlines() if needle in ln]
    assert len(hits) == 1, proc.stderr


def test_bad_grpo_inputs_are_one_line_each_and_nothing_is_queued(tiny, hpcft_home, run_hpcft, tmp_path):
    from hpcft.core.config import load_settings

    _stage(tiny, hpcft_home)
    _refused(run_hpcft, _job(tmp_path, "typo", rewards=["answer_numric"]),
             "unknown reward 'answer_numric' (did you mean 'answer_numeric'?)")
    broken = tmp_path / "broken.py"
    broken.write_text("def score(completions, **kw)\n    return [1.0] * len(completions)\n")
    _refused(run_hpcft, _job(tmp_path, "syntax", rewards=[f"{broken}:score"]),
             f"reward {broken}:score: {broken} does not import: SyntaxError")
    missing = tmp_path / "needs.py"
    missing.write_text("import no_such_package_here\n\ndef score(completions, **kw):\n    return [0.0]\n")
    _refused(run_hpcft, _job(tmp_path, "imports", rewards=[f"{missing}:score"]),
             "does not import: it imports 'no_such_package_here'")
    _refused(run_hpcft, _job(tmp_path, "nofunc", rewards=[f"{missing}:other"]), "defines no function 'other'")
    _refused(run_hpcft, _job(tmp_path, "batch", batch_size=6),
             "grpo.num_generations 4 does not divide the generation batch 6")
    good = tmp_path / "good.py"
    good.write_text("def score(completions, **kw):\n    return [1.0] * len(completions)\n")
    pinned = hashlib.sha256(good.read_bytes()).hexdigest()
    good.write_text(good.read_text() + "# edited after pinning\n")
    _refused(run_hpcft, _job(tmp_path, "changed", rewards=[{"function": f"{good}:score", "sha256": pinned}]),
             f"changed since it was pinned (sha256 {hashlib.sha256(good.read_bytes()).hexdigest()}, the job pins "
             f"{pinned})")
    _refused(run_hpcft, _job(tmp_path, "vllm", grpo={"num_generations": 4, "max_completion_length": 8,
                                                     "use_vllm": True}),
             "grpo.use_vllm: true needs vllm in this Python")
    fake = tmp_path / "vllm-env"       # an env with vllm (its package folder), on this CPU partition
    (fake / "lib" / "python3.11" / "site-packages" / "vllm").mkdir(parents=True)
    (fake / "lib" / "python3.11" / "site-packages" / "trl").mkdir(parents=True)
    job = yaml.safe_load(_job(tmp_path, "vllm-cpu", grpo={"num_generations": 4, "max_completion_length": 8,
                                                          "use_vllm": True}).read_text())
    job["env"] = {"venv": str(fake)}
    (tmp_path / "vllm-cpu.yaml").write_text(yaml.safe_dump(job))
    _refused(run_hpcft, tmp_path / "vllm-cpu.yaml", "grpo.use_vllm: true on a CPU partition: TRL's weight sync")
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text(json.dumps({"prompt": "What is 1 plus 1?"}) + "\n")
    _refused(run_hpcft, _job(tmp_path, "rows", dataset=str(bad_rows)),
             f"data {bad_rows}, row 1: no answer column, which the rewards read")
    runs = load_settings().runs
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


def test_check_lists_the_reward_file_with_its_sha256_and_records_it(tiny, hpcft_home, run_hpcft, tmp_path):
    _stage(tiny, hpcft_home)
    good = tmp_path / "good.py"
    good.write_text("import math\n\ndef score(completions, **kw):\n    return [math.e] * len(completions)\n")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    path = _job(tmp_path, "listed", rewards=["answer_numeric", {"function": "good.py:score", "weight": 0.5}])
    out = run_hpcft("check", str(path), check=True).stdout
    assert f"runs your code: good.py:score (sha256 {digest})" in out and "rewards answer_numeric x1, score x0.5" in out


@pytest.mark.slow
def test_a_short_grpo_run_logs_every_reward_and_the_kl(tiny, hpcft_home, tmp_path):
    """In the worker (no Slurm): a built-in and a user reward, beta > 0 (the reference is the
    model with the fresh adapter disabled), each step's reward, components, KL and length."""
    from devtools.runs import make_run, run_worker

    _stage(tiny, hpcft_home)
    mine = tmp_path / "mine.py"
    mine.write_text("def short(completions, completion_ids, **kw):\n    return [-len(c) / 8 for c in completion_ids]\n")
    paths = make_run({"name": "grpo-short", "executor": "local", "train": {
        "task": "grpo", "model": "llama3-8b-instruct", "dataset": str(write_grpo(tmp_path / "g.jsonl", messages=True)),
        "max_steps": 3, "batch_size": 8, "max_seq_length": 64, "learning_rate": 3e-3, "logging_steps": 1,
        "eval_subset": 4, "seed": 3, "grpo": {"num_generations": 4, "max_completion_length": 8, "beta": 0.04},
        "rewards": ["think_format", {"function": f"{mine}:short", "weight": 0.5,
                                     "sha256": hashlib.sha256(mine.read_bytes()).hexdigest()}]}})
    proc = run_worker(paths, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads(paths.metrics.read_text())
    g = m["grpo"]
    assert m["task"] == "grpo" and m["headline"] == "reward" and m["train"]["global_step"] == 3
    assert g["steps"] == [1, 2, 3] and all(isinstance(k, float) for k in g["kl"])
    assert set(g["reward_components"]) == {"think_format", "short"}
    assert all(-1 <= x <= 0 for x in g["reward_components"]["short"]) and all(0 < n <= 8 for n in g["completion_length"])
    for i, s in enumerate(g["steps"]):   # the weighted sum TRL optimises
        want = g["reward_components"]["think_format"][i] + 0.5 * g["reward_components"]["short"][i]
        assert g["reward"][i] == pytest.approx(want, abs=1e-5), s
    assert m["reference"] == "the model with the adapter disabled" and m["train"]["tokens_per_second"] > 0
    assert "reward" in m["eval"] and "rewards/short/mean" in m["eval"]


# --------------------------------------------------------------------------- the memory estimate

def test_the_estimate_counts_the_rollouts_and_a_reference_when_beta_is_set(tmp_path):
    from hpcft.core.job import Job
    from hpcft.core.memory.estimate import estimate, shape_from_config
    from hpcft.preflight.memcheck import plan_of

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "vocab_size": 128256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    shape = shape_from_config(cfg)

    def est(**train):
        job = Job.model_validate({"name": "g", "resources": {"gpus_per_node": 1}, "train": {
            "task": "grpo", "model": "m", "dataset": "d.jsonl", "rewards": ["answer_numeric"], "batch_size": 8,
            "gradient_accumulation": 4, "max_seq_length": 1024, **train}})
        return estimate(shape, plan_of(job, tmp_path))

    lora, full, kl = est(), est(method="full"), est(method="full", grpo={"beta": 0.04})
    # 32 completions (8 x 4 steps per generation) x 1024 tokens of bf16 KV cache (2 x 32 layers x 8 x 128)
    want = 32 * (1024 * 2 * 32 * 8 * 128 * 2 + 4 * 128256) / 2 ** 30
    assert lora.rollout == pytest.approx(want) and lora.plan.rollouts == 32 and "rollouts 4.0" in lora.summary()
    assert full.reference == 0 and kl.reference == pytest.approx(2 * shape.params / 2 ** 30)
    assert est(gradient_accumulation=1).rollout == pytest.approx(want / 4)
    assert "rollout" in lora.as_dict()["device_parts_gib"]
