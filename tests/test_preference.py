"""Preference tuning (issue 17, deliverable 6) without a cluster: the job schema, the row rules
the pre-flight and the worker share, how rows are rendered and tokenized for TRL, and bad input
refused before anything is queued (one line each, exit 2). Training on the dev Slurm is in
tests/test_preference_slurm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, preference_rows, write_preference
from hpcft.core.job import TrainSpec
from hpcft.core.pref_rows import row_problem, sample_problems


def _spec(**kw) -> TrainSpec:
    return TrainSpec.model_validate({"model": "m", "dataset": "d.jsonl", **kw})


def _error(**kw) -> str:
    with pytest.raises(ValidationError) as exc:
        _spec(**kw)
    return str(exc.value)


# --------------------------------------------------------------------------- the job schema

def test_preference_tasks_are_llm_tasks_with_their_own_defaults():
    t = _spec(task="dpo", init_from="my-sft", preference={"beta": 0.2, "loss_type": "ipo", "max_prompt_length": 256})
    assert t.is_llm and t.is_preference and t.llm_method == "lora"
    assert t.learning_rate == 5e-6 and t.max_seq_length == 1024
    assert _spec(task="simpo", method="full").learning_rate == 5e-7
    assert not _spec(task="causal-lm").is_preference


@pytest.mark.parametrize("kw, message", [
    ({"task": "causal-lm", "init_from": "x"}, "init_from: only for the preference tasks"),
    ({"task": "sequence-classification", "preference": {"beta": 0.1}}, "only for"),
    ({"task": "dpo", "packing": True}, "packing: only for task: causal-lm"),
    ({"task": "orpo", "preference": {"loss_type": "ipo"}}, "'ipo': not a setting of task: orpo"),
    ({"task": "dpo", "preference": {"loss_type": "sigmod"}}, "'sigmod': one of sigmoid, hinge"),
    ({"task": "kto", "batch_size": 1}, "task: kto needs batch_size 2 or more"),
    ({"task": "dpo", "preference": {"simpo_gamma": 1.0}}, "simpo_gamma: only for task: simpo"),
    ({"task": "dpo", "max_seq_length": 64, "preference": {"max_prompt_length": 64}}, "leaves no room"),
])
def test_preference_settings_are_checked(kw, message):
    assert message in _error(**kw)


# --------------------------------------------------------------------------- rows

@pytest.mark.parametrize("row, task, message", [
    ({"prompt": "q", "chosen": "a"}, "dpo", "a preference row needs prompt, chosen and rejected; this one has no "
                                            "rejected (it has: chosen, prompt)"),
    ({"chosen": "a", "rejected": "b"}, "orpo", "this one has no prompt"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "dpo", "prompt's last turn is the assistant's"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "simpo",
     "chosen's last turn is 'user', not the assistant's"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "dpo", "chosen is empty"),
    ({"prompt": "q", "completion": "a"}, "kto", "a KTO row needs prompt, completion and label (true/false)"),
    ({"prompt": "q", "completion": "a", "label": "yes"}, "kto", 'label must be true or false, not "yes"'),
    ({"prompt": "q", "chosen": "a"}, "kto", "this one has no rejected"),
    (["q", "a"], "dpo", "a row is a JSON object, not list"),
])
def test_bad_rows_say_what_is_missing(row, task, message):
    assert message in row_problem(row, task)


def test_good_rows_of_every_form_pass():
    for form, tasks in (("text", ("dpo", "orpo", "simpo", "kto")), ("messages", ("dpo", "kto")), ("kto", ("kto",))):
        for row in preference_rows(6, form=form):
            for task in tasks:
                assert row_problem(row, task) is None, (form, task, row)
    assert row_problem({"prompt": "q", "chosen": {"role": "assistant", "content": "a"}, "rejected": "b"}, "dpo") is None


def test_the_sample_check_names_file_and_line(tmp_path):
    path = write_preference(tmp_path / "p.jsonl", n=8)
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({k: v for k, v in json.loads(lines[2]).items() if k != "rejected"})
    lines[5] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    got = sample_problems(path, "dpo")
    assert got[0].startswith(f"{path}:3: a preference row needs prompt, chosen and rejected; this one has no rejected")
    assert got[1].startswith(f"{path}:6: not JSON") and len(got) == 2
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}]))
    assert sample_problems(as_json, "dpo") == [f"{as_json}: row 2: a preference row needs prompt, chosen and "
                                               "rejected; this one has no rejected (it has: chosen, prompt)"]
    assert sample_problems(tmp_path / "data.csv", "dpo") == []


# --------------------------------------------------------------------------- rendering and tokens (worker side)

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("pref") / "llama", decoys=False)


def _encoder(tiny, max_len=64, max_prompt=None):
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.preference import Encoder
    from hpcft.worker.engines.native.llm_model import load_tokenizer

    tok = load_tokenizer(tiny)
    return tok, Encoder(tok, ld.Renderer(tok, train_on="last"), max_len, max_prompt)


def test_rows_render_like_sft_and_both_forms_give_the_same_tokens(tiny):
    tok, enc = _encoder(tiny)
    [text_row], [msg_row] = preference_rows(1), preference_rows(1, form="messages")
    a, b = enc.pairwise(text_row), enc.pairwise(msg_row)
    assert a == b
    assert tok.decode(a["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tok.decode(a["chosen_ids"]) == text_row["chosen"] + "<|im_end|>"
    assert tok.decode(a["rejected_ids"]) == text_row["rejected"] + "<|im_end|>"
    system = enc.pairwise({**text_row, "system": "Answer briefly."})
    assert tok.decode(system["prompt_ids"]).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")


def test_long_prompts_keep_their_end_and_replies_fit(tiny):
    tok, enc = _encoder(tiny, max_len=24, max_prompt=10)
    row = {"prompt": "one two three four five six seven eight nine ten eleven twelve", "chosen": "red " * 30,
           "rejected": "blue"}
    out = enc.pairwise(row)
    assert len(out["prompt_ids"]) == 10 and tok.decode(out["prompt_ids"]).endswith("assistant\n")
    assert len(out["prompt_ids"]) + len(out["chosen_ids"]) == 24
    assert tok.decode(out["rejected_ids"]) == "blue<|im_end|>"


def test_kto_unpairs_preference_rows_and_keeps_labels(tiny):
    _, enc = _encoder(tiny)
    kto = preference_rows(2, form="kto")
    pair = preference_rows(1)[0]
    batch = {k: [r.get(k) for r in [*kto, pair]] for k in ("prompt", "completion", "label", "chosen", "rejected")}
    out = enc.unpaired(batch)
    assert out["label"] == [True, False, True, False]
    assert out["prompt_ids"][2] == out["prompt_ids"][3] and out["completion_ids"][2] != out["completion_ids"][3]


def test_the_worker_names_the_first_bad_row_and_counts_the_rest():
    import datasets

    from hpcft.worker.data.preference import check_rows
    from hpcft.worker.errors import DataFormatError

    rows = preference_rows(6)
    rows[4] = rows[5] = {"prompt": "q", "chosen": "a"}  # a missing key is None in the loaded dataset
    with pytest.raises(DataFormatError) as exc:
        check_rows(datasets.Dataset.from_list(rows), "dpo", "dataset d.jsonl, split train")
    assert str(exc.value) == ("dataset d.jsonl, split train, row 5: a preference row needs prompt, chosen and "
                              "rejected; this one has no rejected (it has: chosen, prompt) (1 more row like it)")


# --------------------------------------------------------------------------- refused before the queue

def _stage(tiny, home: Path) -> None:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])


def _job(tmp_path, name, data, **train) -> Path:
    job = {"name": name, "executor": "local",
           "train": {"task": "dpo", "model": "llama3-8b-instruct", "dataset": str(data), **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _fake_run(home: Path, name: str, metrics: dict, train: dict) -> str:
    """A finished run as the runs index and its folder record it (no training)."""
    from hpcft.core.config import load_settings
    from hpcft.core.rundir import RunPaths
    from hpcft.runs.index import RunRecord, RunStore, now_iso

    settings = load_settings()
    paths = RunPaths(settings.runs / f"20260101-000000-{name}")
    paths.dir.mkdir(parents=True)
    (paths.dir / "output").mkdir()
    paths.job_yaml.write_text(yaml.safe_dump({"name": name, "train": train}))
    paths.metrics.write_text(json.dumps({"completed": True, "output_dir": str(paths.dir / "output"), **metrics}))
    RunStore(settings.runs).add(RunRecord(run_id=paths.dir.name, name=name, run_dir=str(paths.dir), job_file=None,
                                          kind="train", executor="local", submitted_at=now_iso(), job_id="1",
                                          state="COMPLETED"))
    return paths.dir.name


def _refused(run_hpcft, path: Path, needle: str) -> None:
    proc = run_hpcft("submit", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    hits = [ln for ln in lines if needle in ln]
    assert len(hits) == 1, proc.stderr


def test_bad_inputs_are_one_line_each_and_nothing_is_queued(tiny, hpcft_home, run_hpcft, tmp_path):
    from hpcft.core.config import load_settings

    _stage(tiny, hpcft_home)
    data = write_preference(tmp_path / "pref.jsonl", n=8)
    rows = data.read_text().splitlines()
    no_rejected = tmp_path / "no-rejected.jsonl"
    no_rejected.write_text("\n".join([*rows[:3], json.dumps({"prompt": "q", "chosen": "a"}), *rows[3:]]) + "\n")
    _refused(run_hpcft, _job(tmp_path, "no-rejected", no_rejected),
             f"{no_rejected}:4: a preference row needs prompt, chosen and rejected; this one has no rejected")
    kto = write_preference(tmp_path / "kto.jsonl", n=4, form="kto")
    kto.write_text(kto.read_text() + json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    _refused(run_hpcft, _job(tmp_path, "kto-no-label", kto, task="kto", batch_size=2),
             f"{kto}:5: a KTO row needs prompt, completion and label (true/false)")
    clf = _fake_run(hpcft_home, "mrpc", {"headline": "accuracy"}, {"model": "bert-base-uncased"})
    _refused(run_hpcft, _job(tmp_path, "no-run", data, init_from="no-such-run"),
             "train.init_from 'no-such-run': no run or job 'no-such-run'")
    _refused(run_hpcft, _job(tmp_path, "from-classifier", data, init_from="mrpc"),
             f"train.init_from 'mrpc' (run {clf}) is a sequence-classification run; init_from continues an LLM run")
    _fake_run(hpcft_home, "sft-lora", {"task": "causal-lm", "adapter": True}, {"model": "llama3-8b-instruct"})
    _refused(run_hpcft, _job(tmp_path, "full-on-adapter", data, init_from="sft-lora", method="full"),
             "trained a LoRA adapter; use method: lora to keep training it")
    runs = load_settings().runs
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == sorted(
        ["20260101-000000-mrpc", "20260101-000000-sft-lora"])  # nothing else was written


def test_a_row_the_models_template_cannot_render_is_refused_before_the_queue(tiny, hpcft_home, run_hpcft, tmp_path):
    """A model whose chat template refuses a system turn (Gemma-2's, tests/data/chat_templates):
    the row with a system prompt is named at pre-flight (before: the job died on the node)."""
    import shutil

    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    model = tmp_path / "gemma-like"
    shutil.copytree(tiny, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (Path(__file__).parent / "data" / "chat_templates" / "gemma-2-it.jinja").read_text()
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    register_local(Cache(hpcft_home / "cache"), "model", "google/gemma-2-2b-it", model)
    data = write_preference(tmp_path / "pref.jsonl", n=4)
    rows = data.read_text().splitlines()
    rows[2] = json.dumps({**json.loads(rows[2]), "system": "Be terse."})
    data.write_text("\n".join(rows) + "\n")
    path = _job(tmp_path, "gemma-system", data)
    path.write_text(path.read_text().replace("llama3-8b-instruct", "google/gemma-2-2b-it"))
    _refused(run_hpcft, path, f"{data}:3: the model's chat template cannot render this conversation: "
                              "System role not supported")


def test_init_from_is_recorded_as_the_run_folder(tiny, hpcft_home, run_hpcft, tmp_path):
    _stage(tiny, hpcft_home)
    run_id = _fake_run(hpcft_home, "sft-lora", {"task": "causal-lm", "adapter": True},
                       {"model": "llama3-8b-instruct"})
    path = _job(tmp_path, "dpo-dry", write_preference(tmp_path / "p.jsonl", n=4), init_from="sft-lora")
    out = run_hpcft("check", str(path), check=True).stdout
    assert f"✓ preference: task dpo, continues run {run_id}" in out


@pytest.mark.slow
def test_orpo_simpo_and_kto_train_on_their_rows(tiny, hpcft_home, tmp_path, run_hpcft):
    """The other three tasks, a few steps each in the worker (no Slurm): TRL's ORPO and CPO
    (simpo) take hpcft's token ids through ``tokenize_row``, KTO through ``_prepare_dataset``
    with its KL completions; each logs its rewards per evaluation."""
    from devtools.runs import make_run, run_worker

    _stage(tiny, hpcft_home)
    for task, form in (("orpo", "messages"), ("simpo", "text"), ("kto", "kto")):
        data = write_preference(tmp_path / f"{task}.jsonl", n=24, form=form)
        paths = make_run({"name": f"pref-{task}", "executor": "local", "train": {
            "task": task, "model": "llama3-8b-instruct", "dataset": str(data), "max_steps": 4, "batch_size": 4,
            "max_seq_length": 64, "learning_rate": 5e-3, "logging_steps": 1, "seed": 3}})
        proc = run_worker(paths, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        m = json.loads(paths.metrics.read_text())
        assert m["task"] == task and m["train"]["global_step"] == 4
        assert m["reference"] == ("none (reference-free)" if task != "kto" else "the model with the adapter disabled")
        assert isinstance(m["eval"]["rewards/margins"], float) and len(m["preference"]["margins"]) == 1
    # a preference run's adapter merges like an SFT run's (the last one: KTO, LoRA on the base)
    out = json.loads(run_hpcft("export", str(paths.dir), "--merge", "--json", check=True).stdout)
    assert out["merged"] and (Path(out["dest"]) / "config.json").is_file()
    assert not list(Path(out["dest"]).glob("adapter_*"))
