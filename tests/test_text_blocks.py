"""``data_format: text`` without loss (issue 28, finding 7): the documents are concatenated with
the EOS between them and cut into ``max_seq_length`` blocks; no token is lost, the last shorter
block is kept or dropped as ``train.text_last_block`` says, and under ``packing: true`` each
document attends only to itself (per-document position ids, as packed examples have)."""

from __future__ import annotations

import json

import pytest

from hpcft.worker.data import llm as ld

pytestmark = pytest.mark.worker


def test_blocks_cover_every_token_in_order():
    docs = [list(range(100, 105)), list(range(200, 212)), list(range(300, 303))]  # 5 + 12 + 3 = 20 tokens
    flat = [i for d in docs for i in d]
    kept = ld.text_blocks(docs, 8)
    assert [len(b["input_ids"]) for b in kept] == [8, 8, 4]
    assert [i for b in kept for i in b["input_ids"]] == flat and all(b["labels"] == b["input_ids"] for b in kept)
    assert "position_ids" not in kept[0]
    assert [len(b["input_ids"]) for b in ld.text_blocks(docs, 8, keep_last=False)] == [8, 8]
    iso = ld.text_blocks(docs, 8, isolate=True)
    assert [i for b in iso for i in b["input_ids"]] == flat
    # positions restart where a document starts and where a block starts; a document's first token is not
    # trained as the continuation of the one before
    assert iso[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert iso[1]["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert iso[2]["position_ids"] == [0, 0, 1, 2]
    assert iso[0]["labels"] == [ld.IGNORE, 101, 102, 103, 104, ld.IGNORE, 201, 202]
    assert iso[1]["labels"] == iso[1]["input_ids"]  # the second document goes on: trained
    assert iso[2]["labels"] == [211, ld.IGNORE, 301, 302]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from devtools.hub.llm_fixtures import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _job(data, **train):
    from hpcft.core.job import Job

    return Job.model_validate({"name": "text", "train": {"task": "causal-lm", "model": "m", "dataset": str(data),
                                                         "data_format": "text", "max_seq_length": 32, **train}}).train


def _ref(path):
    from hpcft.core.assets import JobAsset

    return JobAsset("file", str(path), path=path, local=True)


@pytest.mark.parametrize("last", ["keep", "drop"])
@pytest.mark.parametrize("packing", [False, True])
def test_a_corpus_of_long_documents_loses_no_token(tok, tmp_path, last, packing):
    """Documents longer than max_seq_length (before: each cut at it, the rest lost) through the
    worker's data phase: every token of every document, each followed by the EOS, in order."""
    from hpcft.worker.data.mix import load_sft_data

    words = "the apple is red and the cloud is white and the sky is blue".split()
    docs = [" ".join(words[(i * 3) % len(words):] + words * (2 + i % 3)) for i in range(12)]
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    t = _job(data, packing=packing, text_last_block=last)
    out = load_sft_data(t, [_ref(data)], tok, ld.Renderer(tok))
    # the training split's documents, tokenized one by one (what the blocks must hold, whole)
    from hpcft.worker.data.mix import split_rows
    from hpcft.worker.data.staged import load_raw

    raw_train, _, _ = split_rows(load_raw(_ref(data)), t, str(data))
    want = [i for row in raw_train for i in ld.encode(tok, ld.Renderer(tok), row, "text", 32)[0]["input_ids"]]
    assert sum(1 for i in want if i == tok.eos_token_id) == len(raw_train)
    rows = out.train  # packed sequences hold whole blocks, in order
    got = [i for ids in rows["input_ids"] for i in ids]
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert max(lengths) <= 32
    if last == "keep":
        assert got == want and out.real_tokens == len(want)
    else:
        cut = len(want) - len(want) % 32
        assert got == want[:cut] and all(n == 32 for n in lengths)
    if packing:
        assert "position_ids" in rows.column_names and len(rows["position_ids"][0]) == lengths[0]


def test_a_text_corpus_mixes_with_chat_rows_under_packing(tok, tmp_path):
    from devtools.hub.llm_fixtures import write_alpaca
    from hpcft.core.job import Job
    from hpcft.worker.data.mix import load_sft_data

    corpus, chat = tmp_path / "corpus.jsonl", write_alpaca(tmp_path / "a.jsonl", n=20)
    corpus.write_text("".join(json.dumps({"text": "the apple is red " * 20}) + "\n" for _ in range(10)))
    t = Job.model_validate({"name": "mix", "train": {
        "task": "causal-lm", "model": "m", "max_seq_length": 64, "packing": True,
        "dataset": [{"name": str(corpus), "data_format": "text"}, str(chat)]}}).train
    out = load_sft_data(t, [_ref(corpus), _ref(chat)], tok, ld.Renderer(tok))
    assert [m["format"] for m in out.info["mix"]] == ["text", "alpaca"]
    assert all(len(p) == len(i) <= 64 for p, i in zip(out.train["position_ids"], out.train["input_ids"]))


def test_a_packed_block_keeps_each_document_to_itself():
    """With packing, a document inside a block has the logits it has alone (transformers reads the
    boundaries from the position ids; the collator sends no attention mask)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (9, 14, 6)]
    [block] = ld.text_blocks(docs, 64, isolate=True)
    batch = ld.Collator(0)([block])
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for d in docs:
            alone = model(input_ids=torch.tensor([d])).logits[0]
            torch.testing.assert_close(packed[start:start + len(d)], alone, rtol=1e-5, atol=1e-5)
            start += len(d)


def test_text_last_block_is_a_job_setting():
    from pydantic import ValidationError

    from hpcft.core.job import TrainSpec

    base = {"model": "m", "dataset": "d.jsonl", "task": "causal-lm", "data_format": "text"}
    assert TrainSpec.model_validate({**base, "text_last_block": "drop"}).text_last_block == "drop"
    assert TrainSpec.model_validate(base).text_last_block is None  # keep
    with pytest.raises(ValidationError, match="text_last_block"):
        TrainSpec.model_validate({**base, "text_last_block": "pad"})
