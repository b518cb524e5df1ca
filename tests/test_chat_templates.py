"""Loss masks on the real chat templates of the model families users fine-tune, token by token.

Each family's tokenizer is a tiny stand-in built here with the family's special tokens, BOS/EOS
and its real chat template (devtools/hub/chat_templates.py names where each template comes
from). Every case states the training sequences as (text, trained) pieces; the test tokenizes
each piece and checks that the example's input ids are exactly those tokens and its labels
exactly those ids where trained and -100 elsewhere.
"""

from __future__ import annotations

import json
import re

import pytest

from hpcft.core.chat import end_of_turn, set_end_of_turn
from hpcft.worker.data import llm as ld

pytestmark = pytest.mark.worker

Q = "What color is the apple?"
Q2 = "And the cloud?"
THINK = "<think>\nan apple is a fruit\n</think>\n\nred"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


@pytest.fixture(scope="module")
def toks():
    from devtools.hub.chat_templates import FAMILIES, make_family_tokenizer

    return {f: make_family_tokenizer(f) for f in FAMILIES}


def _expect(tok, encs: list[dict], sequences: list[list[tuple[str, bool]]]) -> None:
    assert len(encs) == len(sequences), [tok.decode(e["input_ids"]) for e in encs]
    for enc, pieces in zip(encs, sequences, strict=True):
        ids, labels = [], []
        for text, trained in pieces:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [ld.IGNORE] * len(piece)
        assert tok.decode(enc["input_ids"]) == "".join(t for t, _ in pieces)
        assert enc["input_ids"] == ids
        assert enc["labels"] == labels


def _enc(tok, row, fmt="messages", **kw):
    r = ld.Renderer(tok, kw.pop("enable_thinking", None), kw.pop("train_on", "all"))
    return ld.encode(tok, r, row, fmt, 4096, where="test row 1", **kw)


def _msgs(*turns):
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": c} for r, c in zip(roles, turns, strict=False)]}


# ----------------------------------------------------------------------------- Qwen3

def test_qwen3_single_turn_without_thinking_trains_no_empty_think_block(toks):
    tok = toks["qwen3"]
    _expect(tok, _enc(tok, _msgs(Q, "red")), [[
        (f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("red<|im_end|>", True)]])


def test_qwen3_thinking_reply_is_trained_with_its_reasoning_in_either_form(toks):
    tok = toks["qwen3"]
    want = [[(f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n", False),
             ("<think>\nan apple is a fruit\n</think>\n\nred<|im_end|>", True)]]
    _expect(tok, _enc(tok, _msgs(Q, THINK)), want)
    row = {"messages": [{"role": "user", "content": Q},
                        {"role": "assistant", "content": "red", "reasoning_content": "an apple is a fruit"}]}
    _expect(tok, _enc(tok, row), want)
    # an empty think block the data writes is the data's: trained as written
    _expect(tok, _enc(tok, _msgs(Q, "<think>\n\n</think>\n\nred")), [[
        (f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\n\n</think>\n\nred<|im_end|>", True)]])


def test_qwen3_multi_turn_with_thinking_trains_each_turn_after_the_history_the_model_sees(toks):
    """Qwen3 drops the earlier turn's <think> from the history: the second turn is its own sequence
    whose prompt is the rewritten history, and its empty think block stays in the prompt."""
    tok = toks["qwen3"]
    first = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
    _expect(tok, _enc(tok, _msgs(Q, THINK, Q2, "white")), [
        [(first, False), ("<think>\nan apple is a fruit\n</think>\n\nred<|im_end|>", True)],
        [(first + f"red<|im_end|>\n<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
          False), ("white<|im_end|>", True)]])


def test_qwen3_train_on_last_and_enable_thinking_false(toks):
    tok = toks["qwen3"]
    history = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    _expect(tok, _enc(tok, _msgs(Q, THINK, Q2, "white"), train_on="last"), [[
        (history + f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("white<|im_end|>", True)]])
    # enable_thinking: false goes to the template (its prompt has the empty block) and drops the data's reasoning
    _expect(tok, _enc(tok, _msgs(Q, THINK), enable_thinking=False), [[
        (f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("red<|im_end|>", True)]])
    r = ld.Renderer(tok, enable_thinking=False)
    assert r.prompt([{"role": "user", "content": Q}]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_tool_call_tools_column_and_tool_result(toks):
    tok = toks["qwen3"]
    row = {"tools": json.dumps([t["function"] for t in TOOLS]),  # LLaMA-Factory writes the column as a JSON string
           "messages": [{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None, "tool_calls": [CALL]},
                        {"role": "tool", "content": "sunny"},
                        {"role": "assistant", "content": "It is sunny."}]}
    encs = _enc(tok, row)
    system = tok.apply_chat_template([{"role": "user", "content": "x"}], tools=TOOLS, tokenize=False)
    system = system[:system.index("<|im_start|>user")]
    assert '"name": "get_weather"' in system and "# Tools" in system
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    user = system + "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    _expect(tok, encs, [
        [(user + "<think>\n\n</think>\n\n", False), (call, True)],
        [(user + call + "\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
          "<|im_start|>assistant\n<think>\n\n</think>\n\n", False), ("It is sunny.<|im_end|>", True)]])


# ----------------------------------------------------------------------------- one sequence per conversation

def test_qwen25_system_prompt_and_alpaca_history_train_every_turn(toks):
    tok = toks["qwen2.5"]
    row = {"instruction": Q2, "output": "white", "system": "Be terse.", "history": [[Q, "red"]]}
    _expect(tok, _enc(tok, row, "alpaca"), [[
        (f"<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n", False),
        ("red<|im_end|>", True),
        (f"\n<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n", False),
        ("white<|im_end|>", True)]])
    # without a system prompt the template's default one is in the (masked) prompt
    enc = _enc(tok, {"instruction": Q, "output": "red"}, "alpaca")[0]
    assert tok.decode(enc["input_ids"]).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_reasoning_content_is_kept_by_a_template_that_does_not_read_it(toks):
    tok = toks["qwen2.5"]
    row = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": Q},
                        {"role": "assistant", "content": "red", "reasoning_content": "an apple is a fruit"}]}
    _expect(tok, _enc(tok, row), [[
        (f"<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\nan apple is a fruit\n</think>\n\nred<|im_end|>", True)]])


def test_llama3_system_prompt_multi_turn_and_train_on_last(toks):
    tok = toks["llama3"]
    row = {"messages": [{"role": "system", "content": "Be terse."}, *_msgs(Q, "red", Q2, "white")["messages"]]}
    head = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
    turn1 = f"<|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    turn2 = f"<|start_header_id|>user<|end_header_id|>\n\n{Q2}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    _expect(tok, _enc(tok, row), [[(head + turn1, False), ("red<|eot_id|>", True), (turn2, False),
                                    ("white<|eot_id|>", True)]])
    _expect(tok, _enc(tok, row, train_on="last"), [[(head + turn1 + "red<|eot_id|>" + turn2, False),
                                                     ("white<|eot_id|>", True)]])


def test_llama31_tool_call_and_ipython_result(toks):
    tok = toks["llama3.1"]
    row = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Paris?"},
                                        {"role": "assistant", "content": None, "tool_calls": [CALL]},
                                        {"role": "tool", "content": "sunny"},
                                        {"role": "assistant", "content": "It is sunny."}]}
    enc = _enc(tok, row)
    assert len(enc) == 1
    trained = [tok.decode([i for i, lab in zip(enc[0]["input_ids"], enc[0]["labels"], strict=True) if lab != ld.IGNORE])]
    assert trained == ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>It is sunny.<|eot_id|>']
    text = tok.decode(enc[0]["input_ids"])
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"sunny"<|eot_id|>' in text  # the template tojsons it
    assert "Given the following functions" in text  # the tools went into the first user turn


def test_internlm25_chatml_with_bos(toks):
    tok = toks["internlm2.5"]
    _expect(tok, _enc(tok, _msgs(Q, "red")), [[
        (f"<s><|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n", False), ("red<|im_end|>", True)]])


def test_glm4_trains_the_next_turn_marker_as_the_end_of_each_reply(toks):
    """GLM-4's template writes nothing after a reply; the model stops at <|user|>, so that token is
    trained at the end of each reply (and not repeated in the next prompt)."""
    tok = toks["glm4"]
    row = {"messages": [{"role": "system", "content": "Be terse."}, *_msgs(Q, "red", Q2, "white")["messages"]]}
    _expect(tok, _enc(tok, row), [[
        (f"[gMASK]<sop><|system|>\nBe terse.<|user|>\n{Q}<|assistant|>", False), ("\nred<|user|>", True),
        (f"\n{Q2}<|assistant|>", False), ("\nwhite<|user|>", True)]])


def test_glm4_tools_on_the_system_message_and_calls_in_its_own_form(toks):
    """GLM-4 reads tools from a message and writes a call as <|assistant|>{name}\\n{arguments}; the
    call's end is <|observation|>, the answer's <|user|>: each trained as the template writes next."""
    tok = toks["glm4"]
    row = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Paris?"},
                                        {"role": "assistant", "content": None, "tool_calls": [CALL]},
                                        {"role": "tool", "content": "sunny"},
                                        {"role": "assistant", "content": "It is sunny."}]}
    system = tok.apply_chat_template([{"role": "system", "content": "", "tools": TOOLS}], tokenize=False)
    assert system.startswith("[gMASK]<sop><|system|>\n") and "## get_weather" in system
    _expect(tok, _enc(tok, row), [[
        (system + "<|user|>\nWeather in Paris?<|assistant|>", False), ('get_weather\n{"city": "Paris"}<|observation|>', True),
        ("\nsunny<|assistant|>", False), ("\nIt is sunny.<|user|>", True)]])


# ----------------------------------------------------------------------------- templates that rewrite history

def test_deepseek_r1_distill_keeps_the_reasoning_its_template_drops(toks):
    tok = toks["deepseek-r1-distill"]
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    _expect(tok, _enc(tok, _msgs(Q, THINK, Q2, "white")), [
        [(f"{bos}<｜User｜>{Q}<｜Assistant｜><think>\n", False), (f"an apple is a fruit\n</think>\n\nred{eos}", True)],
        [(f"{bos}<｜User｜>{Q}<｜Assistant｜>\n\nred{eos}<｜User｜>{Q2}<｜Assistant｜><think>\n\n</think>\n\n", False),
         (f"white{eos}", True)]])


def test_mistral_system_prompt_in_the_last_user_turn(toks):
    tok = toks["mistral"]
    row = {"messages": [{"role": "system", "content": "Be terse."}, *_msgs(Q, "red", Q2, "white")["messages"]]}
    _expect(tok, _enc(tok, row), [
        [(f"<s>[INST] Be terse.\n\n{Q}[/INST]", False), (" red</s>", True)],
        [(f"<s>[INST] {Q}[/INST] red</s>[INST] Be terse.\n\n{Q2}[/INST]", False), (" white</s>", True)]])
    _expect(tok, _enc(tok, _msgs(Q, "red", Q2, "white")), [[
        (f"<s>[INST] {Q}[/INST]", False), (" red</s>", True), (f"[INST] {Q2}[/INST]", False), (" white</s>", True)]])


def test_sharegpt_function_call_observation_and_row_system(toks):
    tok = toks["qwen2.5"]
    row = {"system": "You call tools.", "tools": json.dumps([t["function"] for t in TOOLS]),
           "conversations": [{"from": "human", "value": "Weather in Paris?"},
                             {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                             {"from": "observation", "value": "sunny"},
                             {"from": "gpt", "value": "It is sunny."}]}
    enc = _enc(tok, row, "sharegpt")[0]
    text = tok.decode(enc["input_ids"])
    assert text.startswith("<|im_start|>system\nYou call tools.\n\n# Tools")
    trained = tok.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != ld.IGNORE])
    assert trained == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
                       "It is sunny.<|im_end|>")
    assert "<tool_response>\nsunny\n</tool_response>" in text


# ----------------------------------------------------------------------------- bad input: one line naming the row

@pytest.mark.parametrize("family,row,match", [
    ("qwen2.5", _msgs(Q, "red", Q2), r"test row 1: the last turn is user's, not the assistant's"),
    ("deepseek-r1-distill", {"messages": [{"role": "user", "content": "Weather?"},
                                          {"role": "assistant", "content": None, "tool_calls": [CALL]}]},
     r"test row 1: the model's chat template cannot render this tool call as a reply \(get_weather\)"),
    ("llama3", {"messages": [{"role": "user", "content": "Weather?"},
                             {"role": "assistant", "content": None, "tool_calls": [CALL]}]},
     r"test row 1: the model's chat template drops the tool call 'get_weather'"),
    ("internlm2.5", {"tools": TOOLS, **_msgs(Q, "red")},
     r"test row 1: the model's chat template ignores the `tools` column"),
])
def test_rows_the_template_cannot_train_are_one_line_errors_naming_the_row(toks, family, row, match):
    with pytest.raises(ld.DataFormatError, match=match) as info:
        _enc(toks[family], row)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- end of turn, saved as EOS

def test_end_of_turn_token_per_family(toks):
    want = {"qwen3": "<|im_end|>", "qwen2.5": "<|im_end|>", "qwen2.5-base": "<|im_end|>", "llama3": "<|eot_id|>",
            "llama3.1": "<|eot_id|>", "glm4": "<|user|>", "internlm2.5": "<|im_end|>",
            "deepseek-r1-distill": "<｜end▁of▁sentence｜>", "mistral": "</s>"}
    assert {f: end_of_turn(t) for f, t in toks.items()} == want


def test_base_model_with_chatml_saves_im_end_as_eos(tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from devtools.hub.chat_templates import make_family_tokenizer

    tok = make_family_tokenizer("qwen2.5-base")
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    gen = GenerationConfig(eos_token_id=endoftext)
    note = set_end_of_turn(tok, gen)
    assert note and "<|im_end|>" in note
    tok.save_pretrained(tmp_path)
    gen.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [im_end, endoftext]
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token == "<|im_end|>"
    assert set_end_of_turn(tok, gen) is None  # idempotent
    # GLM-4: <|user|> stops generation, the tokenizer's EOS stays what it is
    glm = make_family_tokenizer("glm4")
    gen = GenerationConfig(eos_token_id=glm.eos_token_id)
    set_end_of_turn(glm, gen)
    assert glm.eos_token == "<|endoftext|>" and gen.eos_token_id[0] == glm.convert_tokens_to_ids("<|user|>")


def test_base_model_trained_on_chatml_stops_at_im_end_after_save(tmp_path):
    """A base checkpoint (EOS <|endoftext|>) fine-tuned on ChatML replies: with the generation
    config it had, it runs on to max_new_tokens; with the one saved after training (end of turn
    made EOS) it stops at <|im_end|>."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from devtools.hub.chat_templates import make_family_tokenizer

    tok = make_family_tokenizer("qwen2.5-base")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, eos_token_id=tok.eos_token_id))
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    r = ld.Renderer(tok)
    [enc] = ld.encode(tok, r, {"instruction": "Repeat the word apple.", "output": "apple apple"}, "alpaca", 256)
    ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):  # memorise the one reply, <|im_end|> included
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05
    model.eval()
    prompt = tok(r.prompt([{"role": "user", "content": "Repeat the word apple."}]), return_tensors="pt",
                 add_special_tokens=False)
    n = prompt["input_ids"].shape[1]
    with torch.no_grad():
        before = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert before.shape[1] - n == 12  # never stops: <|im_end|> is not its EOS
    set_end_of_turn(tok, model.generation_config)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = saved.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert tok.decode(after[0, n:]) == "apple apple<|im_end|>"


def test_the_api_server_stops_at_each_familys_own_end_of_turn():
    """serve --api stops a reply at the token the model's template ends replies with, also where
    neither the EOS nor the common markers name it (a base model taught ChatML keeps <|endoftext|>
    as EOS; R1 distills end with their own sentence token)."""
    from types import SimpleNamespace

    from devtools.hub.chat_templates import FAMILIES, make_family_tokenizer
    from hpcft.worker.serving.api_engine import stop_token_ids

    for family in FAMILIES:
        tok = make_family_tokenizer(family)
        ids = stop_token_ids(tok, SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None)))
        assert tok.convert_tokens_to_ids(end_of_turn(tok)) in ids, family
        assert tok.eos_token_id in ids, family


# ----------------------------------------------------------------------------- the login side's renderer

CONVERSATIONS = [
    _msgs(Q, "red")["messages"],
    [{"role": "system", "content": "Answer in one word."}, *_msgs(Q, THINK, Q2, "white")["messages"]],
    [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
     {"role": "tool", "tool_call_id": "call00001", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}],
]


@pytest.mark.parametrize("family", ["qwen3", "qwen2.5", "llama3", "llama3.1", "glm4", "internlm2.5",
                                    "deepseek-r1-distill", "mistral"])
def test_the_pre_flight_renders_each_real_template_as_jinjas_own_sandbox_does(family, tmp_path):
    """The pre-flight's renderer (hpcft.core.chat.TemplateTokenizer), with its time and size limits,
    writes exactly the text of jinja's own sandbox (what it used before the limits), and fails
    where that fails, for each family's real template on plain, system, thinking and tool rows
    (None values dropped, as transformers drops them)."""
    import jinja2.ext
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from devtools.hub.chat_templates import FAMILIES
    from hpcft.core import chat_sandbox
    from hpcft.core.chat import TemplateTokenizer

    f = FAMILIES[family]
    specials = {"bos_token": f["bos"], "eos_token": f["eos"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": f["template"], **specials}))
    mine = TemplateTokenizer.from_folder(tmp_path)
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    plain.filters["tojson"] = chat_sandbox._tojson
    plain.globals["raise_exception"] = chat_sandbox._raise
    template = plain.from_string(f["template"])
    rendered = 0
    for msgs in CONVERSATIONS:
        for tools in (None, TOOLS):
            for gen in (False, True):
                kw = {"tools": tools, "add_generation_prompt": gen}
                try:
                    # None values dropped first, as transformers 5 does (and the pre-flight's renderer)
                    plain_msgs = [{k: v for k, v in m.items() if v is not None} for m in msgs]
                    want = template.render(messages=plain_msgs, **kw, **{k: v for k, v in specials.items() if v})
                except (TemplateError, TypeError) as exc:
                    with pytest.raises(type(exc), match=re.escape(str(exc))):
                        mine.apply_chat_template(msgs, **kw)
                    continue
                assert mine.apply_chat_template(msgs, **kw) == want, (msgs, kw)
                rendered += 1
    assert rendered >= 6


# ----------------------------------------------------------------------------- None values (issue 28, finding 6)

DATA = __import__("pathlib").Path(__file__).parent / "data" / "chat_templates"


def test_content_null_beside_tool_calls_trains_on_the_original_qwen3_template(tmp_path):
    """Qwen3's template as first released concatenates the content: `content: null` beside
    tool_calls is refused by transformers itself; hpcft writes it "" and trains the call, and the
    pre-flight accepts the same row."""
    from devtools.hub.chat_templates import make_family_tokenizer
    from hpcft.core.chat import TemplateTokenizer
    from hpcft.core.sft_rows import template_problems

    tok = make_family_tokenizer("qwen3")
    tok.chat_template = (DATA / "qwen3-original.jinja").read_text()
    msgs = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    with pytest.raises(Exception, match="content|NoneType"):  # transformers 5 drops the key, 4.x keeps None
        tok.apply_chat_template(msgs, tokenize=False)
    [enc] = _enc(tok, {"messages": msgs})
    trained = tok.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != ld.IGNORE])
    assert tok.decode(enc["input_ids"]).startswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in trained
    folder = tmp_path / "qwen3"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": tok.chat_template,
                                                              "eos_token": "<|im_end|>"}))
    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps({"messages": msgs}) + "\n")
    assert template_problems(data, TemplateTokenizer.from_folder(folder), "messages") == []


def test_the_pre_flight_drops_none_values_as_transformers_does(tmp_path):
    """A dataset that mixes turns with and without tool calls has `tool_calls: null` on the plain
    ones; Llama-3.1's template tests `'tool_calls' in message`: the pre-flight renders it as
    transformers does (the key dropped), not as a broken tool call."""
    from devtools.hub.chat_templates import FAMILIES, make_family_tokenizer
    from hpcft.core.chat import TemplateTokenizer

    f = FAMILIES["llama3.1"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": f["template"],
                                                                "bos_token": f["bos"], "eos_token": f["eos"]}))
    mine = TemplateTokenizer.from_folder(tmp_path)
    msgs = [{"role": "user", "content": Q, "tool_calls": None},
            {"role": "assistant", "content": "red", "tool_calls": None}]
    want = make_family_tokenizer("llama3.1").apply_chat_template([{k: v for k, v in m.items() if v is not None}
                                                                  for m in msgs], tokenize=False)
    assert mine.apply_chat_template(msgs) == want and "red<|eot_id|>" in want


# ----------------------------------------------------------------------------- after the end of turn (finding 4)

def _phi(name: str):
    """A tiny stand-in with Phi's special tokens (EOS <|endoftext|>) and its real template."""
    from devtools.hub.chat_templates import make_family_tokenizer

    tok = make_family_tokenizer("qwen2.5")
    tok.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = (DATA / name).read_text()
    return tok


@pytest.mark.parametrize("name, nl", [("phi-3.5-mini-instruct.jinja", "\n"), ("phi-4-mini-instruct.jinja", "")])
def test_phi_trains_each_reply_through_end_and_not_what_follows(name, nl):
    """Phi-3.5 and Phi-4-mini write `<|end|>` after a reply, then `\\n` (3.5) and, at the end of the text,
    the EOS: a reply is trained through `<|end|>` only, and a conversation is one sequence (before:
    `<|end|>\\n<|endoftext|>` trained on every turn, each turn its own sequence)."""
    tok = _phi(name)
    assert end_of_turn(tok) == "<|end|>"
    row = {"messages": [{"role": "system", "content": "Be terse."}, *_msgs(Q, "red", Q2, "white")["messages"]]}
    _expect(tok, _enc(tok, row), [[
        (f"<|system|>{nl}Be terse.<|end|>{nl}<|user|>{nl}{Q}<|end|>{nl}<|assistant|>{nl}", False), ("red<|end|>", True),
        (f"{nl}<|user|>{nl}{Q2}<|end|>{nl}<|assistant|>{nl}", False), ("white<|end|>", True)]])


def test_gemma2_trains_through_end_of_turn_and_refuses_a_system_turn():
    from devtools.hub.chat_templates import make_family_tokenizer

    tok = make_family_tokenizer("qwen2.5")
    tok.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>",
                            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = (DATA / "gemma-2-it.jinja").read_text()
    assert end_of_turn(tok) == "<end_of_turn>"
    _expect(tok, _enc(tok, _msgs(Q, "red", Q2, "white")), [[
        (f"<bos><start_of_turn>user\n{Q}<end_of_turn>\n<start_of_turn>model\n", False), ("red<end_of_turn>", True),
        (f"\n<start_of_turn>user\n{Q2}<end_of_turn>\n<start_of_turn>model\n", False), ("white<end_of_turn>", True)]])
    with pytest.raises(ld.DataFormatError, match=r"^test row 1: .*System role not supported$"):
        _enc(tok, {"messages": [{"role": "system", "content": "Be terse."}, *_msgs(Q, "red")["messages"]]})


COHERE = ["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>",
          "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>",
          "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>"]


def test_command_r7b_ends_a_turn_at_its_eos_and_does_not_train_the_next_header():
    """Command-R7B's tool template closes a reply with <|END_RESPONSE|><|END_OF_TURN_TOKEN|> (its EOS) and
    always writes the next chatbot header: the end of turn is the EOS (before: <|END_RESPONSE|>, made
    the EOS), and the header after it is the next prompt's, untrained."""
    from devtools.hub.chat_templates import make_family_tokenizer

    tok = make_family_tokenizer("qwen2.5")
    tok.add_special_tokens({"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>",
                            "additional_special_tokens": COHERE})
    tok.chat_template = (DATA / "command-r7b-12-2024-tool_use.jinja").read_text()
    assert end_of_turn(tok) == "<|END_OF_TURN_TOKEN|>"

    def trained(row) -> list[str]:
        encs = ld.encode(tok, ld.Renderer(tok), row, "messages", 16384, where="test row 1")
        return [tok.decode([i for i, lab in zip(e["input_ids"], e["labels"], strict=True) if lab != ld.IGNORE])
                for e in encs]

    assert trained(_msgs(Q, "red", Q2, "white")) == [
        "<|START_RESPONSE|>red<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_RESPONSE|>white<|END_RESPONSE|>"
        "<|END_OF_TURN_TOKEN|>"]
    call = {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    row = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather?"},
                                        {"role": "assistant", "content": None, "tool_calls": [call],
                                         "reasoning_content": "I will call it."},
                                        {"role": "tool", "tool_call_id": "call00001", "content": "sunny"},
                                        {"role": "assistant", "content": "Sunny."}]}
    assert trained(row) == ['<|START_THINKING|>I will call it.<|END_THINKING|><|START_ACTION|>[\n    {"tool_call_id": '
                            '"0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n]<|END_ACTION|>'
                            "<|END_OF_TURN_TOKEN|><|START_RESPONSE|>Sunny.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]
