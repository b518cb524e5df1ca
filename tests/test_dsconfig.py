"""DeepSpeed config generation and checks of users' config files (issue 5 pre-flight)."""

import json

import pytest

from hpcft.core.config import load_settings
from hpcft.core.dsconfig import build, check, resolve
from hpcft.core.errors import ConfigError
from hpcft.core.job import TrainSpec
from hpcft.core.job_load import load_job


def train(**kw):
    return TrainSpec(model="m", dataset="d", **kw)


def test_default_is_no_deepspeed_for_one_device_and_stage0_for_several(tmp_path):
    assert resolve(train(), 1, "gpu", tmp_path) is None
    assert resolve(train(), 4, "cpu", tmp_path) is None          # DDP on CPU unless asked
    cfg = resolve(train(), 8, "gpu", tmp_path)
    assert cfg["zero_optimization"]["stage"] == 0 and cfg["train_batch_size"] == "auto"
    assert resolve(train(deepspeed=False), 8, "gpu", tmp_path) is None
    assert resolve(train(deepspeed=2), 4, "cpu", tmp_path)["zero_optimization"]["stage"] == 2


def test_offload_and_stage3():
    cfg = build(3, True, "gpu")
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert cfg["optimizer"]["params"]["torch_adam"] is True


def test_user_config_problems_listed(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4, "train_batch_size": 100,
        "zero_optimization": {"stage": 5, "offload_param": {"device": "disk"}}, "fp17": {},
    }))
    problems = check(path, batch_size=16, gradient_accumulation=2, world_size=4)
    text = "\n".join(problems)
    assert "unknown DeepSpeed key 'fp17'" in text
    assert "stage must be 0, 1, 2 or 3" in text
    assert "offload_param.device must be cpu, nvme or none" in text
    assert "train_micro_batch_size_per_gpu=8 disagrees with the job's train.batch_size=16" in text
    assert "gradient_accumulation_steps=4 disagrees" in text
    assert "train_batch_size=100 but batch_size x gradient_accumulation x ranks = 16 x 2 x 4 = 128" in text


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2},\n  oops\n}\n')
    assert check(path, 16, 1, 2)[0].startswith(f"{path}:3: invalid JSON")


def test_job_with_bad_ds_file_fails_validation(tmp_path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 9}}')
    job = tmp_path / "job.yaml"
    job.write_text("name: x\ntrain: {model: m, dataset: d, deepspeed: ds.json}\n"
                   "resources: {gpus_per_node: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_job(job, load_settings())
    assert "train.deepspeed: " in info.value.lines()[0] and "stage must be" in info.value.lines()[0]


@pytest.mark.parametrize("content, message", [
    (b'{"zero_optimization": {"stage": 1}, "zero_optimization": {"stage": 3}}', "duplicate key 'zero_optimization'"),
    (b'{"fp16": {"enabled": "\xff"}}', "not UTF-8 text (byte 0xff at offset 22)"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[1, 2]", "a DeepSpeed config is a JSON object ({...})"),
    (b" " * 1_000_001, "larger than 1 MB; a DeepSpeed config is a few hundred bytes"),
])
def test_hostile_deepspeed_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_bytes(content)
    assert check(path, 16, 1, 2) == [f"{path}: {message}"]


def test_huge_integer_is_one_line(tmp_path):
    path = tmp_path / "ds.json"
    path.write_bytes(b'{"train_batch_size": ' + b"1" * 5000 + b"}")
    problems = check(path, 16, 1, 2)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: invalid JSON: ") and "\n" not in problems[0]


def test_odd_values_do_not_crash(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": True, "offload_optimizer": {"device": ["cpu"]}},
                                "train_batch_size": 64}))
    assert check(path, 16, 2, None) == [  # world size unknown (invalid resources): not compared
        f"{path}: zero_optimization.stage must be 0, 1, 2 or 3 (got True)",
        f"{path}: zero_optimization.offload_optimizer.device must be cpu, nvme or none (got ['cpu'])"]


def test_dsconfig_does_not_import_the_job_schema():
    import ast
    import inspect

    import hpcft.core.dsconfig as dsconfig

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(dsconfig)))
                if isinstance(node, ast.ImportFrom)}
    assert not any(m and (m == "job" or m.endswith(".job")) for m in imported), imported
