"""Token ids of the whole rendering with a real SentencePiece vocabulary (issue 28, finding 3).

The vocabulary is Mistral's v1 SentencePiece model (32000 pieces, byte fallback, the
Llama-2-style set-up Phi-3.5-mini and TinyLlama also use), converted by transformers 5's own
``LlamaTokenizer`` (``legacy=False``: Metaspace, ``prepend_scheme: first``); see
tests/data/tokenizers/MANIFEST.md. Such a tokenizer writes a word differently at the start of a
text (``▁Red``) than after a newline inside one (``Red``), so pieces tokenized one by one give
ids the model never sees at inference; hpcft tokenizes each rendering once and masks by the
characters of each piece."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from hpcft.worker.data import llm as ld

pytestmark = pytest.mark.worker

DATA = Path(__file__).parent / "data"
PHI_SPECIALS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def phi():
    """The real SentencePiece vocabulary with Phi-3.5-mini's added tokens and its chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = gzip.decompress((DATA / "tokenizers" / "mistral-v1-spm.tokenizer.json.gz").read_bytes()).decode()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(raw), bos_token="<s>", eos_token="<|endoftext|>",
                                  unk_token="<unk>", additional_special_tokens=PHI_SPECIALS)
    tok.chat_template = (DATA / "chat_templates" / "phi-3.5-mini-instruct.jinja").read_text()
    return tok


def test_the_ids_are_those_of_the_whole_rendering(phi):
    msgs = [{"role": "user", "content": "What color is the apple?"}, {"role": "assistant", "content": "Red"},
            {"role": "user", "content": "And the sky?"}, {"role": "assistant", "content": "Blue, mostly."}]
    [enc] = ld.encode(phi, ld.Renderer(phi), {"messages": msgs}, "messages", 512)
    whole = phi(phi.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == whole[:len(enc["input_ids"])]
    trained = [phi.convert_ids_to_tokens(i) for i, lab in zip(enc["input_ids"], enc["labels"], strict=True)
               if lab != ld.IGNORE]
    assert trained[:2] == ["Red", "<|end|>"]  # as the model writes it after <|assistant|>\n
    # the reply tokenized alone starts otherwise: what tokenizing piece by piece trained
    assert phi.convert_ids_to_tokens(phi("Red", add_special_tokens=False)["input_ids"]) == ["▁Red"]
    assert "".join(trained).replace("▁", " ") == "Red<|end|>Blue, mostly.<|end|>"


def test_the_plain_template_keeps_the_bos_and_the_whole_text(phi):
    import copy

    base = copy.deepcopy(phi)
    base.chat_template = None
    [enc] = ld.encode(base, ld.Renderer(base), {"instruction": "Name a color.", "output": "Red"}, "alpaca", 512)
    text = "### Instruction:\nName a color.\n\n### Response:\nRed<|endoftext|>"
    assert enc["input_ids"] == base(text, add_special_tokens=True)["input_ids"]
    trained = base.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != ld.IGNORE])
    assert trained == "Red<|endoftext|>"
