"""causal-lm data: formats, chat-template rendering, loss masking, packing (no training)."""

from __future__ import annotations

import json

import pytest

from hpcft.worker.data import llm as ld


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
    [enc] = ld.encode(tok, r, row, "alpaca", 256)
    assert len(enc["input_ids"]) == len(enc["labels"])
    text = tok.decode(enc["input_ids"])
    assert text.startswith("<|im_start|>user\nRepeat the word apple") and "Answer briefly." in text
    assert _trained(tok, enc) == "apple apple apple<|im_end|>"
    first_reply = enc["labels"].index(next(x for x in enc["labels"] if x != ld.IGNORE))
    prompt_part = tok.decode(enc["input_ids"][:first_reply])
    assert prompt_part.endswith("<|im_start|>assistant\n")  # everything up to the reply is masked
    assert all(x == ld.IGNORE for x in enc["labels"][:first_reply])


def test_multi_turn_messages_and_sharegpt_train_every_assistant_turn_only(tok):
    r = ld.Renderer(tok)
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What color is the apple?"},
            {"role": "assistant", "content": "red"}, {"role": "user", "content": "And the cloud?"},
            {"role": "assistant", "content": "white"}]
    [enc] = ld.encode(tok, r, {"messages": msgs}, "messages", 256)
    assert _trained(tok, enc) == "red<|im_end|>white<|im_end|>"
    conv = {"conversations": [{"from": "human", "value": "Spell book backwards."}, {"from": "gpt", "value": "k o o b"}]}
    assert _trained(tok, ld.encode(tok, r, conv, "sharegpt", 256)[0]) == "k o o b<|im_end|>"
    [last] = ld.encode(tok, ld.Renderer(tok, train_on="last"), {"messages": msgs}, "messages", 256)
    assert _trained(tok, last) == "white<|im_end|>"


def test_plain_template_without_a_chat_template_and_truncation(tok):
    tok2 = type(tok)(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    assert not tok2.chat_template
    r = ld.Renderer(tok2)
    row = {"instruction": "What color is the river?", "output": "The river is green."}
    [enc] = ld.encode(tok2, r, row, "alpaca", 256)
    assert tok2.decode(enc["input_ids"]).startswith("### Instruction:\nWhat color is the river?\n\n### Response:\n")
    assert _trained(tok2, enc) == "The river is green.<|im_end|>"
    [short] = ld.encode(tok2, r, row, "alpaca", 12)
    assert len(short["input_ids"]) == 12 == len(short["labels"])
    [text] = ld.encode(tok2, r, {"text": "the apple is red"}, "text", 64)
    assert text["labels"] == text["input_ids"]  # plain text: every token is trained


def test_packing_keeps_examples_whole_restarts_positions_and_sends_no_attention_mask(tok):
    r = ld.Renderer(tok)
    rows = [{"instruction": f"Repeat the word {w} three times.", "output": f"{w} {w} {w}"}
            for w in ("apple", "river", "house", "cloud", "table")]
    encs = [ld.encode(tok, r, row, "alpaca", 64)[0] for row in rows]
    packed = ld.pack(encs, 64)
    assert len(packed) < len(encs)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e["input_ids"]) for e in encs)
    # every example whole, once, its positions restarting at 0; its first label is -100 (the
    # previous example's last token never predicts it), the others unchanged
    segments = []
    for p in packed:
        starts = [i for i, x in enumerate(p["position_ids"]) if x == 0] + [len(p["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            assert p["position_ids"][a:b] == list(range(b - a))
            segments.append((tuple(p["input_ids"][a:b]), tuple(p["labels"][a:b])))
    assert sorted(segments) == sorted((tuple(e["input_ids"]), (ld.IGNORE, *e["labels"][1:])) for e in encs)
    assert all(len(p["input_ids"]) <= 64 and "attention_mask" not in p for p in packed)
    batch = ld.Collator(tok.pad_token_id, multiple=8)(packed)
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] % 8 == 0
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape
    plain = ld.Collator(tok.pad_token_id)(encs[:2])
    assert "position_ids" not in plain and (plain["labels"][plain["attention_mask"] == 0] == ld.IGNORE).all()


@pytest.mark.worker
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_an_example_inside_a_pack_has_the_logits_it_has_alone(arch, attn):
    """The packed batch (position ids, no attention mask) gives every example exactly the logits
    it gets on its own: no token attends across an example boundary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
    cls, cfg = (LlamaForCausalLM, LlamaConfig(**kw)) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config(**kw))
    cfg._attn_implementation = attn
    model = cls(cfg).eval()
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(0, 97, (n,), generator=g).tolist(), "labels": [1] * n} for n in (7, 12, 5)]
    [seq] = ld.pack(examples, 64)
    batch = ld.Collator(0, multiple=8)([seq])
    with torch.no_grad():
        # use_cache=False as in training: transformers reads packing from position ids only without a cache
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for ex in sorted(examples, key=lambda e: -len(e["input_ids"])):  # packed longest first
            n = len(ex["input_ids"])
            alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start:start + n], alone, rtol=1e-5, atol=1e-5)
            start += n
        # and the check can fail: with the attention mask the collator leaves out, attention crosses over
        crossed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                        attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
    assert not torch.allclose(crossed[12:19], packed[12:19], atol=1e-3)  # the second example, 7 tokens


@pytest.mark.worker
def test_packing_refuses_a_model_running_its_own_code():
    from transformers import LlamaConfig, LlamaForCausalLM

    from hpcft.worker.data.packing import PackingError, check_model

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    check_model(LlamaForCausalLM(cfg))  # transformers' own code: packed examples kept apart
    remote = type("ChatGLMForConditionalGeneration", (LlamaForCausalLM,), {"__module__": "modeling_chatglm"})
    with pytest.raises(PackingError, match=r"^packing: true needs transformers' own model code.*set packing: false$"):
        check_model(remote(cfg))


def test_mix_counts_by_weight_and_concatenation_without_weights():
    from hpcft.worker.data.mix import mix_counts, mix_indices

    assert mix_counts([100, 10], [None, None]) == [100, 10]             # no weights: concatenated
    assert mix_counts([100, 10], [1, 1]) == [55, 55]                    # equal shares of the 110
    assert mix_counts([100, 10], [3, None]) == [83, 27]                 # an unweighted entry counts 1
    assert sum(mix_counts([7, 5, 3], [0.5, 0.25, 0.25])) == 15
    assert mix_indices(10, 25, 42) == mix_indices(10, 25, 42)           # deterministic for a seed
    idx = mix_indices(10, 25, 42)
    assert len(idx) == 25 and all(idx.count(i) >= 2 for i in range(10))  # upsampled: every example twice, 5 drawn
    assert len(set(mix_indices(10, 4, 1))) == 4                          # downsampled: without replacement


@pytest.mark.worker
def test_several_datasets_each_in_its_own_format_mixed_by_weight(tmp_path, tok):
    from devtools.hub.llm_fixtures import write_alpaca, write_sharegpt
    from hpcft.core.assets import JobAsset
    from hpcft.core.job import Job
    from hpcft.worker.data.mix import load_sft_data

    a, s = write_alpaca(tmp_path / "a.jsonl", n=40), write_sharegpt(tmp_path / "s.jsonl", n=10)
    job = Job.model_validate({"name": "mix", "train": {
        "task": "causal-lm", "model": "m", "seed": 3, "eval_subset": 2,
        "dataset": [{"name": str(a), "weight": 1}, {"name": str(s), "weight": 1, "data_format": "sharegpt"}]}})
    refs = [JobAsset("file", str(p), path=p, local=True) for p in (a, s)]
    data = load_sft_data(job.train, refs, tok, ld.Renderer(tok))
    mix = data.info["mix"]
    # 36 + 8 training rows (4 and 2 held out), each dataset half of the 44
    assert [(m["format"], m["examples"], m["mixed"]) for m in mix] == [("alpaca", 36, 22), ("sharegpt", 8, 22)]
    assert len(data.train) == 44 and len(data.eval) == 4 and data.info["format"] == "alpaca+sharegpt"
    assert {fmt for _, fmt in data.prompts} == {"alpaca", "sharegpt"}
    again = load_sft_data(job.train, refs, tok, ld.Renderer(tok))
    assert again.train["input_ids"] == data.train["input_ids"]      # same seed, same mix


def test_preflight_samples_local_data_files_and_names_the_row(tmp_path):
    from hpcft.core.sft_rows import sample_problems

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "and?"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, good, bad)) + "\n{oops\n")
    problems = sample_problems(path)
    assert problems == [f"{path}:3: the last turn is 'user', not the assistant's: nothing to train on "
                        "(end each conversation with the assistant's reply)",
                        f"{path}:4: not JSON (Expecting property name enclosed in double quotes)"]
    conv = {"conversations": [{"from": "human", "value": "hi"}]}
    (tmp_path / "c.json").write_text(json.dumps([conv]))
    assert sample_problems(tmp_path / "c.json") == [
        f"{tmp_path / 'c.json'}: row 1: the last turn is from 'human', not the assistant (gpt): nothing to train "
        "on (end each conversation with the assistant's reply)"]


def test_fixture_data_files_are_read_by_their_format(tmp_path):
    from devtools.hub.llm_fixtures import write_alpaca, write_messages

    a = json.loads(write_alpaca(tmp_path / "a.jsonl", n=4).read_text().splitlines()[0])
    m = json.loads(write_messages(tmp_path / "m.jsonl", n=4).read_text().splitlines()[0])
    assert ld.detect_format(a) == "alpaca" and ld.detect_format(m) == "messages"


def test_bad_rows_and_a_zero_weight_are_refused_before_anything_is_queued(tmp_path, hpcft_home, run_hpcft):
    """`hpcft submit`: a messages row ending with the user's turn, and a tool call the staged model's
    template cannot render (a DeepSeek-R1 distill's, read without transformers), each one line
    naming the file and row, exit 2, no run folder; a mixing weight of 0 is a job-file error."""
    from devtools.hub.chat_templates import DEEPSEEK_R1_DISTILL, QWEN2_5

    call = {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None,
                                                                    "tool_calls": [call]}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "and?"}]}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "good.jsonl").write_text(json.dumps(rows[0]) + "\n")
    for name, template in (("r1", DEEPSEEK_R1_DISTILL), ("qwen", QWEN2_5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "tokenizer_config.json").write_text(json.dumps(
            {"chat_template": template, "bos_token": None, "eos_token": "<|im_end|>"}))

    def submit(model: str, dataset: str) -> tuple[int, list[str]]:
        (tmp_path / "job.yaml").write_text(f"name: rows\nexecutor: local\ntrain:\n  task: causal-lm\n"
                                           f"  model: ./{model}\n  dataset: {dataset}\n  max_steps: 1\n")
        res = run_hpcft("submit", str(tmp_path / "job.yaml"), cwd=tmp_path)
        return res.returncode, [ln for ln in res.stderr.splitlines() if "data rows" in ln or "dataset" in ln]

    code, lines = submit("r1", "[data.jsonl, {name: good.jsonl, weight: 2}]")
    assert code == 2
    assert lines == [f"{tmp_path / 'job.yaml'}: data rows: {tmp_path / 'data.jsonl'}:3: the last turn is 'user', not "
                     "the assistant's: nothing to train on (end each conversation with the assistant's reply)",
                     f"{tmp_path / 'job.yaml'}: data rows: {tmp_path / 'data.jsonl'}:2: the model's chat template "
                     "cannot render this tool call as a reply (get_weather)"]
    code, lines = submit("qwen", "data.jsonl")  # Qwen2.5's template writes tool calls: only the last-turn row
    assert code == 2 and len(lines) == 1 and ":3: the last turn is 'user'" in lines[0]
    # packing with a model that runs its own code (auto_map): refused, its attention would mix the examples
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"auto_map": {
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}}))
    (tmp_path / "job.yaml").write_text("name: rows\nexecutor: local\ntrain:\n  task: causal-lm\n  model: ./qwen\n"
                                       "  dataset: good.jsonl\n  packing: true\n  trust_remote_code: true\n")
    res = run_hpcft("submit", str(tmp_path / "job.yaml"), cwd=tmp_path)
    assert res.returncode == 2 and f"{tmp_path / 'job.yaml'}: packing: packing: true with the model's own code " \
        "(modeling_chatglm.ChatGLMForConditionalGeneration, trust_remote_code)" in res.stderr
    code, lines = submit("qwen", "[good.jsonl, {name: good.jsonl, weight: 0}]")
    assert code == 2 and lines == [f"{tmp_path / 'job.yaml'}:6: train.dataset: entry 2 (good.jsonl): weight 0 must be "
                                   "above 0 (leave the dataset out instead)"]
    assert not (hpcft_home / "runs").exists() or not any((hpcft_home / "runs").iterdir())
