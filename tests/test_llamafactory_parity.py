"""Native against delegated on the same YAML (issue 27): the first examples as hpcft's worker
tokenizes them (``hpcft.worker.data.llm.encode``, the model's own chat template) and as LLaMA-Factory
0.9.5 does (its ``get_dataset`` in .venv-lf, ``template: chatml``), for alpaca rows with and without
``input``, on the tiny Llama (its template is ChatML).

The native side reads the rows as the LF YAML maps them (its dataset_info.json entry gives
``alpaca_join: "\n"``: LLaMA-Factory joins ``instruction`` and ``input`` with one newline, where
hpcft's own default is two). What agrees: the prompt tokens, and every response token up to and
including ``<|im_end|>`` is trained on both sides, nothing of the prompt. What does not (so the label
masks of a batch differ; the strict xfail turns into a failure once it is fixed): LLaMA-Factory's
chatml template also trains the newline after ``<|im_end|>``; hpcft's model template ends the
trained part at ``<|im_end|>``, as TRL and the model's own template do (issue 28, finding 4).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from devtools.hub.llm_fixtures import make_tiny_llama

pytestmark = pytest.mark.slow   # ~20 s: LLaMA-Factory tokenizes in .venv-lf

ROOT = Path(__file__).resolve().parent.parent
LF_VENV = Path(os.environ.get("HPCFT_LF_VENV", ROOT / ".venv-lf"))
ROWS = [{"instruction": "Name the colour of the sky.", "input": "", "output": "blue"},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
LF_SIDE = """
import json, sys
from llamafactory.hparams import get_train_args
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.model import load_tokenizer
model, data, out = sys.argv[1:4]
m, d, t, f, _ = get_train_args({"model_name_or_path": model, "stage": "sft", "do_train": True,
    "finetuning_type": "lora", "dataset": "rows", "dataset_dir": data, "template": "chatml", "cutoff_len": 64,
    "output_dir": out, "overwrite_cache": True, "report_to": "none", "preprocessing_num_workers": None})
mod = load_tokenizer(m)
ds = get_dataset(get_template_and_fix_tokenizer(mod["tokenizer"], d), m, d, t, stage="sft", **mod)["train_dataset"]
print(json.dumps([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in ds]))
"""


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    if not (LF_VENV / "bin" / "llamafactory-cli").is_file():
        msg = f"no LLaMA-Factory lane ({LF_VENV}): HPCFT_LF=1 scripts/setup builds it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: the LF lane is required)")
        pytest.skip(msg)
    from transformers import AutoTokenizer

    from hpcft.worker.data.llm import Renderer, encode

    tmp = tmp_path_factory.mktemp("lf-parity")
    model = make_tiny_llama(tmp / "llama", decoys=False)
    (tmp / "data").mkdir()
    (tmp / "data" / "rows.json").write_text(json.dumps(ROWS))
    (tmp / "data" / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    proc = subprocess.run([str(LF_VENV / "bin" / "python"), "-c", LF_SIDE, str(model), str(tmp / "data"),
                           str(tmp / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                               "HF_DATASETS_CACHE": str(tmp / "hf-datasets")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lf = json.loads(proc.stdout.strip().splitlines()[-1])
    import datasets

    from hpcft.core.llamafactory_data import dataset_entry
    from hpcft.worker.data.mix import _join_input

    tok = AutoTokenizer.from_pretrained(str(model))
    entry = dataset_entry("rows", {"file_name": "rows.json"}, tmp / "data", "causal-lm", pytest.fail)
    assert entry["alpaca_join"] == "\n"
    rows = list(_join_input(datasets.Dataset.from_list(ROWS), entry["alpaca_join"]))
    native = [encode(tok, Renderer(tok), row, "alpaca", 64)[0] for row in rows]
    return native, lf, tok


def _trained(ex: dict) -> list[int]:
    return [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]


def test_the_same_response_tokens_are_trained_and_no_prompt_token(both):
    native, lf, tok = both
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for n, x in zip(native, lf):
        ours, theirs = _trained(n), _trained(x)
        assert ours[-1] == end and theirs[:len(ours)] == ours, (tok.decode(ours), tok.decode(theirs))
        assert tok.decode(theirs[len(ours):]) == "\n"   # LF's chatml trains the newline after <|im_end|>
        prompt = len(n["input_ids"]) - len(ours)
        assert all(lab == -100 for lab in n["labels"][:prompt])


def test_the_prompts_are_the_same_tokens(both):
    native, lf, tok = both
    for n, x in zip(native, lf):
        prompt = len(n["input_ids"]) - len(_trained(n))
        assert n["input_ids"][:prompt] == x["input_ids"][:prompt], (tok.decode(n["input_ids"]), tok.decode(x["input_ids"]))
        assert n["input_ids"] == x["input_ids"][:len(n["input_ids"])]


@pytest.mark.xfail(strict=True, reason="LF's chatml trains the newline after <|im_end|>; hpcft ends at <|im_end|> "
                                       "(see the module docstring)")
def test_the_label_masks_of_the_first_batch_are_equal(both):
    native, lf, _ = both
    assert [(n["input_ids"], n["labels"]) for n in native] == [(x["input_ids"], x["labels"]) for x in lf]
