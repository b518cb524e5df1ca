"""Tokenize once (issue 28): causal-lm's tokenized data cached in the user's own run-time folder,
keyed by everything that changes the tokens, written atomically, rebuilt when damaged; a second
run of the same job trains from it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, make_tokenizer, write_alpaca, write_messages


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    return out


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCFT_RUNTIME", str(tmp_path / "runtime"))
    return tmp_path / "runtime" / "data"


def _tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _job(data, **train):
    from hpcft.core.job import Job

    return Job.model_validate({"name": "c", "train": {"task": "causal-lm", "model": "m", "dataset": str(data),
                                                      "max_seq_length": 64, **train}}).train


def _refs(*paths):
    from hpcft.core.assets import JobAsset

    return [JobAsset("file", str(p), path=p, local=True) for p in paths]


def _key(t, refs, tokdir) -> str:
    from hpcft.worker.data.cache import cache_key, ingredients

    return cache_key(ingredients(t, refs, tokdir))


@pytest.mark.worker
def test_the_key_changes_with_every_ingredient_and_only_with_them(tmp_path, tokdir):
    import shutil

    data = write_alpaca(tmp_path / "a.jsonl", n=20)
    refs = _refs(data)
    base = _key(_job(data), refs, tokdir)
    assert _key(_job(data), _refs(data), tokdir) == base                # the same inputs, the same key
    # a sweep point over the optimizer, or another run length, keeps the data
    assert _key(_job(data, learning_rate=1e-3, epochs=7, batch_size=2), refs, tokdir) == base
    changed = {f"{k}={v}": _key(_job(data, **{k: v}), refs, tokdir) for k, v in [
        ("max_seq_length", 128), ("packing", True), ("train_on", "last"), ("text_last_block", "drop"),
        ("system_prompt", "Be brief."), ("enable_thinking", False), ("data_format", "alpaca"), ("seed", 1),
        ("train_subset", 5), ("eval_subset", 2), ("eval_split", "test")]}
    other = write_alpaca(tmp_path / "b.jsonl", n=20)
    changed["a mix"] = _key(_job(data, dataset=[{"name": str(data), "weight": 2}]), refs, tokdir)
    changed["another file"] = _key(_job(other), _refs(other), tokdir)
    os.utime(data, ns=(1, 1))                                            # the same file, touched
    changed["mtime"] = _key(_job(data), refs, tokdir)
    templ = tmp_path / "templ"        # the template is read from the tokenizer's files, as the login node does
    shutil.copytree(tokdir, templ)
    jinja = templ / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(jinja.read_text().replace("<|im_start|>", "<|im_start|> "))
    else:
        cfg = json.loads((templ / "tokenizer_config.json").read_text())
        cfg["chat_template"] = cfg["chat_template"].replace("<|im_start|>", "<|im_start|> ")
        (templ / "tokenizer_config.json").write_text(json.dumps(cfg))
    changed["template"] = _key(_job(data), refs, templ)
    tok2 = tmp_path / "tok2"
    shutil.copytree(tokdir, tok2)
    cfg = json.loads((tok2 / "tokenizer_config.json").read_text())
    (tok2 / "tokenizer_config.json").write_text(json.dumps({**cfg, "clean_up_tokenization_spaces": True}))
    changed["tokenizer file"] = _key(_job(data), refs, tok2)
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed


@pytest.mark.worker
def test_second_call_reads_the_cache_memory_mapped_with_the_same_tokens(tmp_path, tokdir, runtime, capsys,
                                                                      monkeypatch):
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data import mix
    from hpcft.worker.data.cache import sft_data
    from hpcft.worker.data.mix import load_sft_data

    data = write_messages(tmp_path / "m.jsonl", n=30)
    tok, refs = _tok(tokdir), _refs(data)
    t = _job(data, packing=True)
    first = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    second = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    out = capsys.readouterr().out
    key = first.info["cache_key"]
    assert f"-> cache {key}" in out and f"tokenized data from cache {key} (" in out
    assert (first.info["cache"], second.info["cache"]) == ("built", "hit")
    assert second.info["tokens"] == first.real_tokens == second.real_tokens > 0
    plain = load_sft_data(t, refs, tok, ld.Renderer(tok))                  # what no cache gives
    monkeypatch.setattr(mix, "ROWS_PER_PROC", 1)                          # 30 rows: two processes all the same
    procs = load_sft_data(t, refs, tok, ld.Renderer(tok), num_proc=2)      # the preprocess job's map
    for k in ("input_ids", "labels", "position_ids"):
        assert second.train[k] == first.train[k] == plain.train[k] == procs.train[k]
    assert second.eval["labels"] == plain.eval["labels"]
    assert [fmt for _, fmt in second.prompts] == [fmt for _, fmt in plain.prompts]
    assert all(f["filename"].startswith(str(runtime / key)) for f in second.train.cache_files)  # memory-mapped
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    unpacked = sft_data(_job(data), refs, tok, ld.Renderer(tok), tokdir)
    assert unpacked.train["length"] == [len(x) for x in unpacked.train["input_ids"]]
    off = sft_data(_job(data, data_cache=False), refs, tok, ld.Renderer(tok), tokdir)
    assert off.info["cache"] == "off" and "cache_key" not in off.info


@pytest.mark.worker
def test_a_crash_mid_build_leaves_nothing_that_is_read(tmp_path, tokdir, runtime, monkeypatch):
    import datasets

    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.cache import sft_data

    data = write_alpaca(tmp_path / "a.jsonl", n=20)
    tok, refs, t = _tok(tokdir), _refs(data), _job(data)
    real, calls = datasets.Dataset.save_to_disk, []

    def dies_on_eval(self, path, *a, **kw):
        calls.append(path)
        if path.endswith("eval"):
            real(self, path, *a, **kw)
            raise KeyboardInterrupt("killed mid-build")
        return real(self, path, *a, **kw)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", dies_on_eval)
    with pytest.raises(KeyboardInterrupt):
        sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    assert len(calls) == 2 and not [p for p in runtime.iterdir() if not p.name.endswith(".lock")]
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real)
    again = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    assert again.info["cache"] == "built"
    # a folder that lost its meta.json (a build killed before it was written, by another tool) is not read
    folder = runtime / again.info["cache_key"]
    (folder / "meta.json").rename(tmp_path / "meta.json")
    assert sft_data(t, refs, tok, ld.Renderer(tok), tokdir).info["cache"] == "built"


@pytest.mark.worker
def test_a_damaged_cache_is_rebuilt_with_one_warning(tmp_path, tokdir, runtime, capsys):
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.cache import sft_data

    data = write_alpaca(tmp_path / "a.jsonl", n=20)
    tok, refs, t = _tok(tokdir), _refs(data), _job(data)
    first = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    ids = first.train["input_ids"]
    arrow = next((runtime / first.info["cache_key"] / "train").glob("*.arrow"))
    size = arrow.stat().st_size
    with open(arrow, "r+b") as fh:                                     # the same size, garbage inside
        fh.seek(size // 2)
        fh.write(b"\xff" * 64)
        fh.truncate(size - 100)
    capsys.readouterr()
    again = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    err = capsys.readouterr().err
    assert again.info["cache"] == "built" and again.train["input_ids"] == ids
    assert err.count("warning:") == 1 and "is damaged" in err and "built again" in err, err


@pytest.mark.worker
def test_eval_split_none_trains_every_row_and_its_empty_eval_survives_the_cache(tmp_path, tokdir, runtime):
    """``eval_split: none`` (what a LLaMA-Factory YAML without val_size maps to): nothing is held
    out, and the cache reads back a split of no rows (datasets cannot save and load one)."""
    from hpcft.core.config import load_settings
    from hpcft.core.errors import ConfigError
    from hpcft.core.job_load import load_job
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.cache import sft_data

    data = write_alpaca(tmp_path / "a.jsonl", n=30)
    tok, refs = _tok(tokdir), _refs(data)
    held = sft_data(_job(data), refs, tok, ld.Renderer(tok), tokdir)
    assert held.info["eval_examples"] > 0 and held.info["train_examples"] < 30     # the default holds some out
    t = _job(data, eval_split="none")
    first = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    second = sft_data(t, refs, tok, ld.Renderer(tok), tokdir)
    assert (first.info["cache"], second.info["cache"]) == ("built", "hit")
    assert second.info["train_examples"] == 30 and second.info["eval_split"] == "none"
    assert len(first.eval) == len(second.eval) == 0 and second.prompts == []
    assert second.train["input_ids"] == first.train["input_ids"]
    with pytest.raises(ConfigError) as err:   # a classifier always evaluates
        load_job(None, load_settings(), text="name: c\ntrain: {model: bert-base-uncased, dataset: glue/mrpc, eval_split: none}\n")
    assert "eval_split: none (train on every row, evaluate nothing) is for causal-lm" in str(err.value)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("llm") / "llama", decoys=False)


@pytest.mark.slow
@pytest.mark.worker
def test_a_second_run_of_the_same_job_trains_from_the_cache(tiny, hpcft_home, tmp_path, run_hpcft):
    from devtools.runs import make_run, run_worker
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])
    data = write_alpaca(tmp_path / "a.jsonl", n=40)
    got = []
    for name in ("cache-first", "cache-second"):
        paths = make_run({"name": name, "executor": "local", "train": {
            "task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data), "max_steps": 2,
            "batch_size": 4, "max_seq_length": 64, "sample_prompts": 0, "logging_steps": 1, "seed": 5,
            "packing": True}})
        proc = run_worker(paths, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        got.append((json.loads(paths.metrics.read_text()), proc.stdout))
    show = run_hpcft("show", paths.run_id, check=True).stdout
    (m1, out1), (m2, out2) = got
    key = m1["data"]["cache_key"]
    assert (m1["data"]["cache"], m2["data"]["cache"]) == ("built", "hit") and m2["data"]["cache_key"] == key
    assert f"-> cache {key}" in out1 and f"tokenized data from cache {key}" in out2
    assert (hpcft_home / "runtime" / "data" / key / "meta.json").is_file()
    # the same tokens, the same first batch: the first step's loss is bit for bit the same
    assert m1["data"]["tokens"] == m2["data"]["tokens"] == m1["train"]["real_tokens"] > 0
    assert m1["train"]["first_loss"] == m2["train"]["first_loss"]
    assert f"tokens, {m2['data']['tokenize_s']:.4g} s; from cache {key} (built in" in show, show
