"""Preference rows on real chat templates (issue 28, findings 1, 2, 5): each reply is split from
its own generation prompt as TRL 1.16 splits conversational rows, so a rejected reply without
reasoning beside a chosen one with it is a well-formed sequence (Qwen3, DeepSeek-R1 distills),
a multi-message reply is scored whole after the shared prompt, and a row the template cannot
render names its row. The templates are the families' own (devtools/hub/chat_templates.py and
tests/data/chat_templates/MANIFEST.md name their sources); the vocabularies are tiny stand-ins,
so what is checked is the text each token id stands for, and that the ids are those of the
whole rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcft.worker.data import llm as ld

pytestmark = pytest.mark.worker

DATA = Path(__file__).parent / "data" / "chat_templates"
Q, Q2 = "What color is the apple?", "And the cloud?"
THINK = "<think>\nan apple is a fruit\n</think>\n\nred"


@pytest.fixture(scope="module")
def toks():
    from devtools.hub.chat_templates import FAMILIES, make_family_tokenizer

    return {f: make_family_tokenizer(f) for f in FAMILIES}


def _encoder(tok, enable_thinking=None):
    from hpcft.worker.data.preference import Encoder

    return Encoder(tok, ld.Renderer(tok, enable_thinking, train_on="last"), 4096, None)


def _texts(tok, out: dict) -> tuple[str, str, str]:
    return tuple(tok.decode(out[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))


def _whole(tok, out: dict, key: str) -> None:
    """The ids are those of the whole rendering prompt + completion, tokenized at once."""
    ids = out["prompt_ids"] + out[key]
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_qwen3_rejected_reply_without_reasoning_gets_its_own_think_block(toks):
    """Qwen3 writes an empty think block before the last reply when it has no reasoning: it goes
    with the rejected reply (before: the rejected sequence was `assistant\\nblue<|im_end|>`, a
    form the template never writes)."""
    tok = toks["qwen3"]
    gen = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
    for chosen, rejected in ((THINK, "blue"), ("blue", THINK)):
        out = _encoder(tok).pairwise({"prompt": Q, "chosen": chosen, "rejected": rejected})
        prompt, c, r = _texts(tok, out)
        assert prompt == gen
        for reply, text in ((chosen, c), (rejected, r)):
            # each sequence is exactly the template's own rendering of the conversation
            want = tok.apply_chat_template([{"role": "user", "content": Q}, {"role": "assistant", "content": reply}],
                                           tokenize=False)
            assert want.startswith(prompt + text) and not want[len(prompt + text):].strip()  # through <|im_end|>
        assert {c, r} == {"<think>\nan apple is a fruit\n</think>\n\nred<|im_end|>",
                          "<think>\n\n</think>\n\nblue<|im_end|>"}
        _whole(tok, out, "chosen_ids")
        _whole(tok, out, "rejected_ids")
    # enable_thinking: false: the empty block is in the generation prompt, the data's reasoning dropped
    out = _encoder(tok, enable_thinking=False).pairwise({"prompt": Q, "chosen": THINK, "rejected": "blue"})
    assert _texts(tok, out) == (gen + "<think>\n\n</think>\n\n", "red<|im_end|>", "blue<|im_end|>")


def test_r1_distill_rejected_reply_without_reasoning_closes_the_prefilled_block(toks):
    """R1 distills prefill `<think>\\n`: a reply without reasoning closes it (before: `<think>\\nblue<eos>`,
    an unclosed block)."""
    tok = toks["deepseek-r1-distill"]
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    out = _encoder(tok).pairwise({"prompt": Q, "chosen": THINK, "rejected": "blue"})
    assert _texts(tok, out) == (f"{bos}<｜User｜>{Q}<｜Assistant｜><think>\n", f"an apple is a fruit\n</think>\n\nred{eos}",
                                f"\n</think>\n\nblue{eos}")
    _whole(tok, out, "rejected_ids")
    # KTO's paired rows: the same prompt, and each completion as the pairwise row has it
    batch = {"prompt": [Q], "chosen": [THINK], "rejected": ["blue"]}
    kto = _encoder(tok).unpaired(batch)
    assert kto["label"] == [True, False]
    assert kto["prompt_ids"] == [out["prompt_ids"]] * 2
    assert kto["completion_ids"] == [out["chosen_ids"], out["rejected_ids"]]


@pytest.mark.parametrize("family", ["qwen2.5", "llama3", "internlm2.5", "glm4", "mistral", "qwen3"])
def test_a_multi_message_reply_is_scored_whole_after_the_shared_prompt(toks, family):
    """chosen = [assistant, user, assistant]: every one of its turns is the completion, and the
    rejected reply is scored after the shared prompt (before: the chosen reply's first turns became
    the prompt of both)."""
    tok = toks[family]
    user = {"role": "user", "content": Q}
    chosen = [{"role": "assistant", "content": "red"}, {"role": "user", "content": Q2},
              {"role": "assistant", "content": "white"}]
    out = _encoder(tok).pairwise({"prompt": [user], "chosen": chosen, "rejected": "blue"})
    prompt, c, r = _texts(tok, out)
    gen = tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    assert prompt == gen
    assert 0 <= c.index("red") < c.index(Q2) < c.index("white")
    assert "red" not in r and "blue" in r and Q2 not in r
    if family not in ("glm4", "qwen3"):  # templates that close each reply: the chosen rendering is the template's
        want = tok.apply_chat_template([user, *chosen], tokenize=False)
        assert want.startswith(prompt + c) and not want[len(prompt + c):].strip()
    _whole(tok, out, "chosen_ids")


def test_a_row_the_template_cannot_render_names_its_row(toks):
    """Mistral's template refuses roles out of order, Gemma-2's a system turn; the worker's error
    names the row (before: a bare ConversationError escaped the encoder)."""
    import datasets

    from devtools.hub.chat_templates import make_family_tokenizer
    from hpcft.worker.data.preference import tokenized
    from hpcft.worker.errors import DataFormatError

    tok = toks["mistral"]
    bad = {"prompt": [{"role": "user", "content": Q}, {"role": "user", "content": Q2}], "chosen": "red",
           "rejected": "blue"}
    with pytest.raises(DataFormatError, match=r"^dataset d.jsonl, split train, row 3: the model's chat template "
                                              "cannot render this conversation: After the optional system message"):
        _encoder(tok).pairwise(bad, "dataset d.jsonl, split train, row 3")
    gemma = make_family_tokenizer("qwen2.5")
    gemma.chat_template = (DATA / "gemma-2-it.jinja").read_text()
    rows = [{"prompt": Q, "chosen": "red", "rejected": "blue", "system": None}] * 2
    rows.append({"prompt": Q, "chosen": "red", "rejected": "blue", "system": "Be terse."})
    for task in ("dpo", "kto"):
        t = type("T", (), {"task": task, "dataset": "d.jsonl", "seed": 0})()
        with pytest.raises(DataFormatError, match=r"^dataset d.jsonl, split train, row 3: .*System role not supported$"):
            tokenized(t, _encoder(gemma), datasets.Dataset.from_list(rows), "train")



def _template_folder(tmp_path, name: str, **specials) -> "object":
    import json

    from hpcft.core.chat import TemplateTokenizer

    folder = tmp_path / name
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": (DATA / name).read_text(), **specials}))
    return TemplateTokenizer.from_folder(folder)


def test_the_pre_flight_renders_preference_rows_on_the_models_template(tmp_path):
    """Gemma-2's template refuses a system turn: the row that has one (its own `system` column or
    a system message in its prompt) is named file:line before anything is queued."""
    import json

    from hpcft.core.pref_rows import template_problems

    gemma = _template_folder(tmp_path, "gemma-2-it.jinja", bos_token="<bos>", eos_token="<eos>")
    rows = [{"prompt": Q, "chosen": "red", "rejected": "blue"},
            {"prompt": Q, "chosen": "red", "rejected": "blue", "system": "Be terse."},
            {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": Q}],
             "chosen": {"role": "assistant", "content": "red"}, "rejected": "blue"},
            {"prompt": Q, "completion": "red", "label": True}]
    path = tmp_path / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = "the model's chat template cannot render this conversation: System role not supported"
    assert template_problems(path, gemma, "dpo") == [f"{path}:2: {want}", f"{path}:3: {want}"]
    assert template_problems(path, gemma, "kto") == [f"{path}:2: {want}", f"{path}:3: {want}"]
    # the job's system_prompt reaches every row, as in the worker
    assert len(template_problems(path, gemma, "kto", system="Be terse.")) == 4


def test_a_base_model_without_a_template_gets_the_plain_prompt_and_each_whole_reply(toks):
    import copy

    tok = copy.deepcopy(toks["qwen2.5"])
    tok.chat_template = None
    chosen = [{"role": "assistant", "content": "red"}, {"role": "user", "content": Q2},
              {"role": "assistant", "content": "white"}]
    out = _encoder(tok).pairwise({"prompt": Q, "chosen": chosen, "rejected": "blue"})
    eos = tok.eos_token
    assert _texts(tok, out) == (f"### Instruction:\n{Q}\n\n### Response:\n",
                                f"red{eos}\n\n### Instruction:\n{Q2}\n\n### Response:\nwhite{eos}", f"blue{eos}")
