"""A LLaMA-Factory YAML read as an hpcft job (hpcft.core.llamafactory): LLaMA-Factory's own example
files (tests/data/llamafactory, see its MANIFEST.md) each map natively or are refused, key by key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hpcft.core.config import Settings
from hpcft.core.errors import ConfigError
from hpcft.core.job_load import load_job
from hpcft.core.llamafactory import IGNORED, KEYS, NATIVE, NEEDS_ENGINE, map_keys
from hpcft.core.yamlfile import load_yaml_file

DATA = Path(__file__).parent / "data" / "llamafactory"
EXAMPLES = sorted(DATA.glob("*.yaml"))
LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>[a-z_0-9]+): (?P<msg>.+)$")

# what each example becomes: the hpcft fields (native), or the keys named in its refusal
NATIVE_EXPECT = {
    "train_lora_qwen3_lora_sft.yaml": {"task": "causal-lm", "method": "lora", "lora": {"r": 8, "target_modules": "all-linear"},
                                       "max_seq_length": 2048, "batch_size": 1, "gradient_accumulation": 8,
                                       "lr_scheduler": "cosine", "precision": "bf16", "train_subset": 1000},
    "train_lora_qwen3_lora_sft_ds3.yaml": {"method": "lora", "deepspeed": str(DATA / "examples/deepspeed/ds_z3_config.json")},
    "train_full_qwen3_full_sft.yaml": {"method": "full", "learning_rate": 1e-5, "epochs": 3.0},
    "train_qlora_qwen3_lora_sft_otfq.yaml": {"method": "qlora", "quantization": {"bits": 4}},
    "train_qlora_llama3_lora_sft_gptq.yaml": {"model": "TechxGenus/Meta-Llama-3-8B-Instruct-GPTQ"},
}
REFUSED_EXPECT = {
    "train_lora_qwen3_lora_dpo.yaml": {"dataset"},      # sharegpt ranking rows
    "train_lora_qwen3_lora_kto.yaml": {"dataset"},      # sharegpt KTO rows
    "train_lora_qwen3_lora_pretrain.yaml": {"stage", "dataset"},
    "train_lora_qwen3_lora_reward.yaml": {"stage", "dataset"},
    "train_lora_qwen3vl_lora_sft.yaml": {"image_max_pixels", "video_max_pixels", "dataset"},
    "extras_galore_llama3_full_sft.yaml": {"use_galore", "galore_layerwise", "galore_target", "galore_rank",
                                           "galore_scale", "pure_bf16"},
    "extras_apollo_llama3_full_sft.yaml": {"use_apollo", "apollo_layerwise", "apollo_target", "apollo_rank",
                                           "apollo_scale", "apollo_scale_type", "pure_bf16"},
    "extras_badam_llama3_full_sft.yaml": {"use_badam", "badam_mode", "badam_switch_mode", "badam_switch_interval",
                                          "badam_verbose"},
    "extras_llama_pro_llama3_freeze_sft.yaml": {"finetuning_type", "freeze_trainable_layers",
                                                "freeze_trainable_modules", "use_llama_pro"},
    "extras_pissa_llama3_lora_sft.yaml": {"pissa_convert"},
}


def test_every_example_is_expected():
    assert {p.name for p in EXAMPLES} == set(NATIVE_EXPECT) | set(REFUSED_EXPECT)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_maps_or_is_refused_key_by_key(path):
    doc = load_yaml_file(path)
    m = map_keys(doc.data, doc, path.parent)
    # no silent drop: every key was mapped, ignored with its reason, or named in a problem
    assert set(m.handled) == set(doc.data), set(doc.data) - set(m.handled)
    named = set()
    for _, text in m.problems:
        hit = LINE.match(text)
        assert hit, text
        assert hit["file"] == str(path) and int(hit["line"]) == doc.line_of((hit["key"],))
        assert "LLaMA-Factory's own engine" in hit["msg"], text
        named.add(hit["key"])
    engine = {k for k, kind in m.handled.items() if kind == NEEDS_ENGINE}
    assert engine <= named
    if path.name in NATIVE_EXPECT:
        assert not m.problems, m.problems
        for key, value in NATIVE_EXPECT[path.name].items():
            assert m.train[key] == value, key
        names = [e["name"] for e in m.train["dataset"]]
        assert names == [str(DATA / "data/identity.json"), str(DATA / "data/alpaca_en_demo.json")]
        assert any("template: " in n and "cannot tell" in n for n in m.notes)
    else:
        assert named == REFUSED_EXPECT[path.name], named


def test_key_table_is_complete():
    for key, (kind, what, apply) in KEYS.items():
        assert kind in (NATIVE, IGNORED, NEEDS_ENGINE) and what, key
        assert (apply is not None) == (kind == NATIVE), key


def test_dataset_info_entries_map_or_are_named():
    """Every entry of LLaMA-Factory's data/dataset_info.json: a dataset entry, or a reason."""
    info = json.loads((DATA / "data/dataset_info.json").read_text())
    from hpcft.core.llamafactory_data import dataset_entry

    for name, spec in info.items():
        for task in ("causal-lm", "dpo", "kto"):
            reasons: list[str] = []
            out = dataset_entry(name, spec, DATA / "data", task, reasons.append)
            assert (out is None) == bool(reasons), (name, task, reasons)
            assert out is not None or all("LLaMA-Factory's own engine" in r for r in reasons), reasons


def _lf(tmp_path: Path, text: str, info: dict | None = None) -> Path:
    if info is not None:
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    p = tmp_path / "lf.yaml"
    p.write_text(text)
    return p


BASE = "model_name_or_path: tiny\nstage: sft\nfinetuning_type: lora\ndataset: mine\n"
INFO = {"mine": {"file_name": "mine.jsonl"}}


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_job(path, Settings())
    return exc.value.lines()


def test_bad_inputs_one_line_each(tmp_path):
    # a key neither engine runs (not one of LLaMA-Factory 0.9.5's): refused, with the nearest real key
    assert _problems(_lf(tmp_path, BASE + "lora_rankk: 8\n", INFO)) == [
        f"{tmp_path / 'lf.yaml'}:5: lora_rankk: not a LLaMA-Factory key (0.9.5); neither engine runs it "
        "(did you mean 'lora_rank'?)"]
    # report_to wandb: the nodes are offline, whichever engine runs it
    (line,) = _problems(_lf(tmp_path, BASE + "report_to: wandb\nuse_galore: true\n", INFO))
    assert line == (f"{tmp_path / 'lf.yaml'}:5: report_to: wandb: hpcft's compute nodes are offline; it logs to "
                    "tensorboard and swanlab (offline)")
    (line,) = _problems(_lf(tmp_path, BASE.replace("mine", "mine,other"), INFO))
    assert line.startswith(f"{tmp_path / 'lf.yaml'}:4: dataset: 'other' is not in ") and "dataset_info.json" in line
    shutil.rmtree(tmp_path / "data")
    (line,) = _problems(_lf(tmp_path, BASE))
    assert line.startswith(f"{tmp_path / 'lf.yaml'}:4: dataset: {tmp_path / 'data' / 'dataset_info.json'} not found")


def test_wrapper_and_engine(tmp_path):
    _lf(tmp_path, BASE + "cutoff_len: 256\npref_beta: 0.2\n", INFO)
    (tmp_path / "data" / "mine.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    job = tmp_path / "job.yaml"
    job.write_text("name: mine\nllamafactory: lf.yaml\nresources: {time: '00:10:00'}\n")
    # pref_beta on sft: TrainSpec refuses preference on task causal-lm, through the schema
    with pytest.raises(ConfigError):
        load_job(job, Settings())
    _lf(tmp_path, BASE + "cutoff_len: 256\n", INFO)
    loaded = load_job(job, Settings())
    t = loaded.job.train
    [entry] = t.dataset_entries
    assert (loaded.job.name, t.task, t.max_seq_length, entry.name) == ("mine", "causal-lm", 256,
                                                                     str(tmp_path / "data" / "mine.jsonl"))
    assert entry.alpaca_join == "\n"   # LLaMA-Factory joins instruction and input with one newline
    assert loaded.job.resources.time == "00:10:00"
    assert loaded.llamafactory.text == (tmp_path / "lf.yaml").read_text()
    # engine: llamafactory forces the delegated engine on a file native could run
    job.write_text("name: mine\nllamafactory: lf.yaml\nengine: llamafactory\n")
    t = load_job(job, Settings()).job.train
    assert (t.task, t.method, t.max_seq_length, t.deepspeed) == ("llamafactory", "lora", 256, False)
    assert t.llamafactory["args"]["cutoff_len"] == 256 and t.dataset == str(tmp_path / "data" / "mine.jsonl")
    assert t.llamafactory["datasets"] == {"mine": str(tmp_path / "data" / "mine.jsonl")}
    job.write_text("name: mine\nllamafactory: lf.yaml\nengine: bogus\n")
    assert _problems(job) == [f"{job}:3: engine: 'bogus': one of native, llamafactory (or leave it out: hpcft runs "
                              "natively what it can and hands the rest to LLaMA-Factory)"]
    # engine: native refuses what only LLaMA-Factory runs, naming that engine; left out, it delegates
    ppo = "llamafactory:\n  model_name_or_path: tiny\n  stage: ppo\n  dataset: mine\n  dataset_dir: data\n"
    job.write_text("name: mine\nengine: native\n" + ppo)
    (line,) = _problems(job)
    assert line == (f"{job}:5: stage: stage 'ppo' needs LLaMA-Factory's own engine (engine: llamafactory); "
                    "hpcft runs sft, dpo (with orpo, simpo) and kto natively")
    job.write_text("name: mine\n" + ppo)
    loaded = load_job(job, Settings())
    assert loaded.job.train.task == "llamafactory" and loaded.job.train.llamafactory["args"]["stage"] == "ppo"
    assert "engine: llamafactory (chosen)" in loaded.llamafactory.notes[0] and "stage 'ppo'" in loaded.llamafactory.notes[0]


def test_preference_mapping(tmp_path):
    info = {"pairs": {"file_name": "pairs.jsonl", "ranking": True,
                      "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}}}
    path = _lf(tmp_path, "model_name_or_path: tiny\nstage: dpo\nfinetuning_type: lora\ndataset: pairs\n"
                         "pref_loss: simpo\npref_beta: 2.5\nsimpo_gamma: 0.3\n", info)
    doc = load_yaml_file(path)
    m = map_keys(doc.data, doc, tmp_path)
    assert not m.problems
    assert m.train["task"] == "simpo" and m.train["preference"] == {"beta": 2.5, "simpo_gamma": 0.3}
    assert m.train["dataset"] == str(tmp_path / "data" / "pairs.jsonl")


LF_TINY = """\
### LLaMA-Factory's examples/train_lora/qwen3_lora_sft.yaml, on a tiny staged model
model_name_or_path: tiny-chat
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 4
lora_target: all
dataset: mine
template: llama3
cutoff_len: 128
output_dir: saves/tiny/lora/sft
logging_steps: 1
plot_loss: true
overwrite_output_dir: true
report_to: none
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
max_steps: 3
lr_scheduler_type: cosine
warmup_ratio: 0.1
ddp_timeout: 180000000
"""


@pytest.fixture
def tiny_lf(tmp_path, hpcft_home):
    from devtools.hub.llm_fixtures import make_tiny_llama, write_alpaca
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    model = make_tiny_llama(tmp_path / "src-model", decoys=False)
    register_local(Cache(hpcft_home / "cache"), "model", "hpcft-test/tiny-chat", model, aliases=["tiny-chat"])
    (tmp_path / "lf" / "data").mkdir(parents=True)
    write_alpaca(tmp_path / "lf" / "data" / "mine.jsonl", n=16)
    _lf(tmp_path / "lf", LF_TINY, INFO)
    return tmp_path / "lf" / "lf.yaml"


@pytest.mark.worker
def test_hpcft_check_on_a_lf_yaml(tiny_lf, capsys):
    from hpcft.cli.main import main

    assert main(["check", "--executor", "local", str(tiny_lf)]) == 0
    out = capsys.readouterr().out
    assert "✓ llamafactory: template: llama3: hpcft renders with the model's own chat template" in out
    # GaLore: delegated (engine: auto); this Python has no llamafactory, so the env check refuses it
    tiny_lf.write_text(LF_TINY + "use_galore: true\n")
    assert main(["check", "--executor", "local", str(tiny_lf)]) == 2
    out = capsys.readouterr().out
    assert "✓ llamafactory: engine: llamafactory (chosen): llamafactory-cli train runs it in the job; natively hpcft " \
           "could not run: use_galore: GaLore needs LLaMA-Factory's own engine (engine: llamafactory)" in out, out
    bad = [ln for ln in out.splitlines() if ln.startswith("✗")]
    assert len(bad) == 1 and "engine: llamafactory (the delegated engine runs llamafactory-cli train in the job) " \
        "needs llamafactory but" in bad[0] and "pip install 'llamafactory>=0.9.5' (or 'hpcft[llamafactory]')" in bad[0]


@pytest.mark.worker
@pytest.mark.slow
def test_a_lf_yaml_trains_through_the_local_executor(tiny_lf, capsys):
    """submit lf.yaml --wait: 3 LoRA steps; the run folder keeps the LF file as written and the
    hpcft job it became."""
    import yaml

    from hpcft.cli.main import main

    before = tiny_lf.read_text()
    assert main(["submit", "--executor", "local", "--wait", str(tiny_lf)]) == 0
    assert tiny_lf.read_text() == before
    folder = Path(next(line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()
                       if line.startswith("folder:")))
    assert (folder / "llamafactory.yaml").read_text() == before
    job = yaml.safe_load((folder / "job.yaml").read_text())
    assert job["name"] == "lf" and job["train"]["lr_scheduler"] == "cosine" and job["train"]["lora"]["r"] == 4
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3, metrics["train"]
    # no val_size, no eval_dataset: LLaMA-Factory evaluates nothing and trains every row; so does hpcft
    assert job["train"]["eval_split"] == "none" and metrics["data"]["eval_examples"] == 0
    assert metrics["headline"] == "train_loss" and metrics["eval"] == {"train_loss": metrics["train"]["loss"]}


def test_docs_table_names_every_key():
    text = (Path(__file__).parents[1] / "docs" / "llm.md").read_text()
    section = text.split("## Bring your LLaMA-Factory YAML", 1)[1].split("\n## ", 1)[0]
    assert [k for k in KEYS if f"`{k}`" not in section] == []


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_keys_as_llamafactory_reads_them(tmp_path, bits):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = _lf(tmp_path, BASE + f"quantization_bit: {bits}\nquantization_type: fp4\ndouble_quantization: false\n",
               INFO)
    q = load_job(path, Settings()).job.train
    assert q.method == "qlora" and q.quantization.bits == bits
    if bits == 4:
        assert (q.quantization.type, q.quantization.double_quant) == ("fp4", False)
    # without quantization_bit LLaMA-Factory ignores them, and so does the mapping
    path.write_text(BASE + "quantization_type: fp4\n")
    assert load_job(path, Settings()).job.train.method == "lora"
