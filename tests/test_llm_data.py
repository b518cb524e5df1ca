"""causal-lm data: formats, chat-template rendering, loss masking, packing (no training)."""

from __future__ import annotations

import json

import pytest

from hpcft.worker import llm_data as ld


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from devtools.hub.llm_fixtures import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _trained(tok, enc) -> str:
    return tok.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != ld.IGNORE])


def test_detects_each_format_and_names_the_columns_when_it_cannot():
    assert ld.detect_format(["instruction", "input", "output"]) == "alpaca"
    assert ld.detect_format(["messages"]) == "messages"
    assert ld.detect_format(["conversations", "id"]) == "sharegpt"
    assert ld.detect_format(["text"]) == "text"
    with pytest.raises(ld.DataFormatError, match=r"columns \(answer, question\)"):
        ld.detect_format(["question", "answer"])
    with pytest.raises(ld.DataFormatError, match="needs column"):
        ld.detect_format(["text"], "alpaca")


def test_alpaca_prompt_tokens_carry_minus_100_and_the_reply_is_trained(tok):
    r = ld.Renderer(tok)
    row = {"instruction": "Repeat the word apple three times.", "input": "Answer briefly.", "output": "apple apple apple"}
    enc = ld.encode(tok, r, row, "alpaca", 256)
    assert len(enc["input_ids"]) == len(enc["labels"])
    text = tok.decode(enc["input_ids"])
    assert text.startswith("<|im_start|>user\nRepeat the word apple") and "Answer briefly." in text
    assert _trained(tok, enc) == "apple apple apple<|im_end|>\n"
    first_reply = enc["labels"].index(next(x for x in enc["labels"] if x != ld.IGNORE))
    prompt_part = tok.decode(enc["input_ids"][:first_reply])
    assert prompt_part.endswith("<|im_start|>assistant\n")  # everything up to the reply is masked
    assert all(x == ld.IGNORE for x in enc["labels"][:first_reply])


def test_multi_turn_messages_and_sharegpt_train_every_assistant_turn_only(tok):
    r = ld.Renderer(tok)
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What color is the apple?"},
            {"role": "assistant", "content": "red"}, {"role": "user", "content": "And the cloud?"},
            {"role": "assistant", "content": "white"}]
    enc = ld.encode(tok, r, {"messages": msgs}, "messages", 256)
    assert _trained(tok, enc) == "red<|im_end|>\nwhite<|im_end|>\n"
    conv = {"conversations": [{"from": "human", "value": "Spell book backwards."}, {"from": "gpt", "value": "k o o b"}]}
    assert _trained(tok, ld.encode(tok, r, conv, "sharegpt", 256)) == "k o o b<|im_end|>\n"


def test_plain_template_without_a_chat_template_and_truncation(tok):
    tok2 = type(tok)(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    assert not tok2.chat_template
    r = ld.Renderer(tok2)
    row = {"instruction": "What color is the river?", "output": "The river is green."}
    enc = ld.encode(tok2, r, row, "alpaca", 256)
    assert tok2.decode(enc["input_ids"]).startswith("### Instruction:\nWhat color is the river?\n\n### Response:\n")
    assert _trained(tok2, enc) == "The river is green.<|im_end|>"
    short = ld.encode(tok2, r, row, "alpaca", 12)
    assert len(short["input_ids"]) == 12 == len(short["labels"])
    text = ld.encode(tok2, r, {"text": "the apple is red"}, "text", 64)
    assert text["labels"] == text["input_ids"]  # plain text: every token is trained


def test_packing_keeps_examples_whole_and_their_masks(tok):
    r = ld.Renderer(tok)
    rows = [{"instruction": f"Repeat the word {w} three times.", "output": f"{w} {w} {w}"}
            for w in ("apple", "river", "house", "cloud", "table")]
    encs = [ld.encode(tok, r, row, "alpaca", 64) for row in rows]
    packed = ld.pack(encs, 64)
    assert len(packed) < len(encs)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e["input_ids"]) for e in encs)
    assert [x for p in packed for x in p["labels"]] == [x for e in encs for x in e["labels"]]
    assert all(len(p["input_ids"]) <= 64 and p["position_ids"][0] == 0 for p in packed)
    batch = ld.Collator(tok.pad_token_id)(packed)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == ld.IGNORE).all()


def test_fixture_data_files_are_read_by_their_format(tmp_path):
    from devtools.hub.llm_fixtures import write_alpaca, write_messages

    a = json.loads(write_alpaca(tmp_path / "a.jsonl", n=4).read_text().splitlines()[0])
    m = json.loads(write_messages(tmp_path / "m.jsonl", n=4).read_text().splitlines()[0])
    assert ld.detect_format(a) == "alpaca" and ld.detect_format(m) == "messages"
