"""Name resolution (the alias table as data), file selection, and the submit-side check. No hub."""

from __future__ import annotations

import pytest

from hpcft.core import assets as A
from hpcft.core.config import Settings
from hpcft.core.errors import ConfigError, StageError
from hpcft.core.job import Assets, Job
from hpcft.core.resolve import load_table, plan, resolve
from hpcft.core.store import Cache
from hpcft.preflight.checks import staged_check as _staged_check
from hpcft.stage import select
from hpcft.stage.layout import register_local

GLUE_CONFIGS = ["ax", "cola", "mnli", "mnli_matched", "mnli_mismatched", "mrpc", "qnli", "qqp", "rte", "sst2",
                "stsb", "wnli"]


@pytest.fixture
def table():
    return load_table(Settings())


@pytest.mark.parametrize("typed,rid", [
    ("bert-base-uncased", "google-bert/bert-base-uncased"),
    ("bert-base-cased", "google-bert/bert-base-cased"),
    ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
])
def test_models(table, typed, rid):
    ref = resolve("model", typed, table)
    assert (ref.kind, ref.repo_id, ref.local) == ("model", rid, None)
    assert typed in ref.names
    if typed == rid == "google-bert/bert-base-uncased":
        assert "bert-base-uncased" in ref.names  # the table's name is recorded as an alias


@pytest.mark.parametrize("cfg", GLUE_CONFIGS)
def test_every_glue_config(table, cfg):
    for typed in (f"glue/{cfg}", f"glue:{cfg}", f"nyu-mll/glue:{cfg}"):
        ref = resolve("dataset", typed, table)
        assert (ref.repo_id, ref.config, ref.metric) == ("nyu-mll/glue", cfg, "glue")
        assert "glue" in ref.names and f"glue/{cfg}" in ref.names


def test_datasets_and_metrics(table):
    y = resolve("dataset", "yelp_review_full", table)
    assert (y.repo_id, y.config, y.metric) == ("Yelp/yelp_review_full", None, None)
    g = resolve("dataset", "org/data:cfg", table)
    assert (g.repo_id, g.config) == ("org/data", "cfg")
    assert resolve("metric", "glue", table).repo_id == "evaluate-metric/glue"
    assert resolve("metric", "bertscore", table).repo_id == "evaluate-metric/bertscore"
    assert resolve("metric", "me/my_metric", table).repo_id == "me/my_metric"


def test_unknown_glue_config_lists_available(table):
    with pytest.raises(StageError) as exc:
        resolve("dataset", "glue/mrcp", table)
    assert "unknown config 'mrcp'" in str(exc.value) and "mrpc" in str(exc.value) and "cola" in str(exc.value)


def test_glue_without_config_is_an_error_in_plan(table):
    with pytest.raises(StageError, match="glue needs a config"):
        plan([], ["glue"], [], table)


def test_plan_adds_preset_metric_once(table):
    refs = plan(["bert-base-uncased"], ["glue/mrpc", "glue/cola"], ["glue", "accuracy"], table)
    assert [(r.kind, r.repo_id, r.config) for r in refs] == [
        ("model", "google-bert/bert-base-uncased", None), ("dataset", "nyu-mll/glue", "mrpc"),
        ("metric", "evaluate-metric/glue", None), ("dataset", "nyu-mll/glue", "cola"),
        ("metric", "evaluate-metric/accuracy", None)]
    assert [r.kind for r in plan(["bert-base-uncased"], ["glue/mrpc"], [], table, with_metrics=False)] == \
        ["model", "dataset"]


def test_plan_reports_all_problems(table):
    with pytest.raises(ConfigError) as exc:
        plan(["m"], ["glue/nope", "glue"], [], table)
    assert len(exc.value.lines()) == 2


def test_settings_extend_and_override_the_table():
    s = Settings.model_validate({"aliases": {
        "models": {"bert-base-uncased": "mirror-org/bert-base-uncased", "tiny": "me/tiny-bert"},
        "datasets": {"mydata": "me/data:clean", "glue2": "nyu-mll/glue"}}})
    t = load_table(s)
    assert resolve("model", "bert-base-uncased", t).repo_id == "mirror-org/bert-base-uncased"
    assert resolve("model", "tiny", t).repo_id == "me/tiny-bert"
    d = resolve("dataset", "mydata", t)
    assert (d.repo_id, d.config) == ("me/data", "clean")
    g = resolve("dataset", "glue2/rte", t)  # an alias of a known repo inherits its configs and metric
    assert (g.repo_id, g.config, g.metric) == ("nyu-mll/glue", "rte", "glue")


def test_bad_settings_alias_is_a_config_error():
    s = Settings.model_validate({"aliases": {"models": {"x": "org/x"}}})
    s.aliases.models["y"] = 3  # type: ignore[assignment]  (bypass pydantic: the table checks too)
    with pytest.raises(ConfigError):
        load_table(s)


def test_local_paths(tmp_path, table, monkeypatch):
    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    ref = resolve("model", "./mymodel", table)
    assert ref.local == (tmp_path / "mymodel").resolve() and ref.repo_id == "local/mymodel"
    with pytest.raises(StageError, match="no such file"):
        resolve("dataset", "./missing.csv", table)


# ---------------------------------------------------------------------------- selection
BERT_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
              "model.onnx", "onnx/model.onnx", "rust_model.ot", "coreml/model.mlmodel", "tokenizer.json",
              "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "README.md", ".gitattributes"]


def test_model_selection_prefers_safetensors():
    assert select.select_model(BERT_FILES) == {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"}


def test_model_selection_bin_only_when_no_safetensors():
    files = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
             "pytorch_model.bin.index.json", "tf_model.h5", "merges.txt", "vocab.json", "spiece.model"]
    assert select.select_model(files) == set(files) - {"tf_model.h5"}
    sharded = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "config.json"]
    assert select.select_model(sharded) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                            "model.safetensors.index.json", "config.json"}


README = """---
configs:
- config_name: mrpc
  data_files:
  - split: train
    path: mrpc/train-*
  - split: test
    path: mrpc/test-*
- config_name: cola
  data_files: [{split: train, path: cola/train-*}]
---
# card
"""


def test_dataset_selection_one_config():
    files = ["README.md", ".gitattributes", "mrpc/train-00000-of-00001.parquet", "mrpc/test-00000-of-00001.parquet",
             "cola/train-00000-of-00001.parquet"]
    wanted, configs = select.select_dataset(files, README, "mrpc")
    assert wanted == {"README.md", "mrpc/train-00000-of-00001.parquet", "mrpc/test-00000-of-00001.parquet"}
    assert configs == ["cola", "mrpc"]
    assert select.select_dataset(files, README, "sst2") == (set(), ["cola", "mrpc"])


def test_dataset_selection_without_card_configs():
    files = ["README.md", "data/train-00000.parquet", "data/test-00000.parquet"]
    wanted, configs = select.select_dataset(files, "# no yaml", None)
    assert configs == ["default"] and wanted == set(files)
    by_dir = ["a/train.parquet", "b/train.parquet"]
    assert select.select_dataset(by_dir, None, "b") == ({"b/train.parquet"}, ["a", "b"])


def test_metric_selection():
    assert select.select_metric(["glue.py", "app.py", "README.md", "requirements.txt", ".gitattributes"], "glue") \
        == {"glue.py", "README.md", "requirements.txt"}


# ---------------------------------------------------------------------------- check
def _job(assets: Assets) -> Job:
    return Job.model_validate({"name": "t", "script": "run.py", "assets": assets.model_dump()})


def staged_check(assets: Assets, settings, base=None):
    return _staged_check(_job(assets), settings, base)


def stage_command(assets: Assets) -> str:
    s = Settings()
    found = A.job_assets(_job(assets), Cache(s.cache), load_table(s))
    return A.stage_command([a for a in found if not a.found], load_table(s))


def test_stage_command_and_check(tmp_path):
    s = Settings()
    assets = Assets(models=["bert-base-uncased"], datasets=["glue/mrpc"], metrics=["glue", "accuracy"])
    assert stage_command(assets) == "hpcft stage bert-base-uncased glue/mrpc --metric accuracy"
    assert stage_command(Assets(datasets=["yelp_review_full"])) == "hpcft stage --dataset yelp_review_full"
    check = staged_check(assets, s)
    assert not check.ok and check.message == "hpcft stage bert-base-uncased glue/mrpc --metric accuracy"

    # staged (here registered from local folders under the same names) -> ok
    cache = Cache(s.cache)
    for kind, rid, cfg, aliases in (("model", "google-bert/bert-base-uncased", None, ["bert-base-uncased"]),
                                    ("dataset", "nyu-mll/glue", "mrpc", ["glue", "glue/mrpc"]),
                                    ("metric", "evaluate-metric/glue", None, ["glue"]),
                                    ("metric", "evaluate-metric/accuracy", None, ["accuracy"])):
        folder = tmp_path / rid.replace("/", "_") / (cfg or "x")
        folder.mkdir(parents=True)
        (folder / "f.txt").write_text(rid)
        register_local(cache, kind, rid, folder, config=cfg, aliases=aliases)
    assert staged_check(assets, s).ok
    assert not staged_check(Assets(datasets=["glue/cola"]), s).ok
    assert staged_check(Assets(datasets=["glue"]), s).ok  # a config-less name: any config will do


def test_local_path_assets_count_when_present(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\n")
    s = Settings()
    assert staged_check(Assets(datasets=[str(csv)]), s).ok
    check = staged_check(Assets(datasets=[str(tmp_path / "nope.csv")]), s)
    assert not check.ok and check.message == f"data file not found: {tmp_path / 'nope.csv'}"
    # relative paths resolve against the job's folder when the caller gives it
    assert staged_check(Assets(datasets=["train.csv"]), s, base=tmp_path).ok
    assert not staged_check(Assets(datasets=["data/x.csv"]), s, base=tmp_path).ok
    both = staged_check(Assets(models=["bert-base-uncased"], datasets=["data/x.csv"]), s, base=tmp_path)
    assert both.message == "hpcft stage bert-base-uncased"
