"""What a delegated run's metrics.json says its LLaMA-Factory output is (the ``task``, ``base_model``
and ``adapter`` that ``hpcft export``, ``eval`` and ``serve`` read), per stage and finetuning type,
and what the login side refuses of it; pure, in milliseconds. The real run is in
tests/test_llamafactory_engine_slurm.py."""

from __future__ import annotations

import json

import pytest

from hpcft.use.delegated import REWARD_MODEL, refusal
from hpcft.worker.engines.llamafactory import logs


@pytest.mark.parametrize("args, saved, task, adapter", [
    ({"stage": "sft", "finetuning_type": "lora"}, "adapter_config.json", "causal-lm", True),
    ({"stage": "sft", "finetuning_type": "lora", "quantization_bit": 4}, "adapter_config.json", "causal-lm", True),
    ({"stage": "sft", "finetuning_type": "full"}, "config.json", "causal-lm", False),
    ({"stage": "pt", "finetuning_type": "freeze"}, "config.json", "causal-lm", False),
    ({}, "adapter_config.json", "causal-lm", True),                       # LLaMA-Factory's defaults: sft, lora
    ({"stage": "ppo"}, "adapter_config.json", "causal-lm", True),         # its policy (value head beside it)
    ({"stage": "dpo"}, "adapter_config.json", "dpo", True),
    ({"stage": "dpo", "pref_loss": "orpo"}, "adapter_config.json", "orpo", True),
    ({"stage": "dpo", "pref_loss": "simpo"}, "config.json", "simpo", False),
    ({"stage": "dpo", "pref_loss": "hinge"}, "adapter_config.json", "dpo", True),
    ({"stage": "kto"}, "adapter_config.json", "kto", True),
    ({"stage": "rm"}, "adapter_config.json", REWARD_MODEL, True),
])
def test_the_output_dir_is_recorded_as_a_native_llm_runs(args, saved, task, adapter, tmp_path):
    (tmp_path / saved).write_text("{}")
    fields = logs.model_fields(args, "/cache/base", tmp_path)
    assert fields == {"task": task, "base_model": "/cache/base", "adapter": adapter}
    metrics = {"engine": "llamafactory", "llamafactory": {"stage": args.get("stage", "sft")},
               "output_dir": str(tmp_path), **fields}
    assert (refusal(metrics, "r1") is None) == (task != REWARD_MODEL)


def test_refused_in_one_line_naming_why(tmp_path):
    base = {"engine": "llamafactory", "llamafactory": {"stage": "sft"}, "output_dir": str(tmp_path)}
    (tmp_path / "generated_predictions.jsonl").write_text(json.dumps({}) + "\n")
    assert refusal({**base, "task": "causal-lm"}, "r1") == (
        f"run r1: LLaMA-Factory saved no model in {tmp_path} (neither config.json nor adapter_config.json; "
        "a YAML with do_train: false only predicts or evaluates)")
    assert "has no task, base model or adapter in its metrics.json" in refusal(base, "r1")
    assert refusal({"task": "causal-lm", "output_dir": str(tmp_path)}, "r1") is None   # a native run: not judged here
