"""Bounded pre-flight and code you can check (issue 26, findings 7 and 8): what another group
member wrote (a model's chat template, a lock file, a staged metric script) cannot hang
``hpcft check``/``stage`` or run unpinned code, and each refusal is one line naming the owner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpcft.core.chat import ChatRenderer, TemplateTokenizer
from hpcft.core.chat_sandbox import RenderLimit

HI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


# --------------------------------------------------------------------------- chat templates at pre-flight

def test_a_chat_template_that_loops_for_ever_ends_hpcft_check_with_one_line(tmp_path, run_hpcft):
    """Finding 7: nested range(100000) loops used to hang `hpcft check` (the data-rows rule renders
    the first rows on the model's template). Now the render stops at its time limit."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": forever, "eos_token": "</s>"}))
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": HI}) + "\n")
    (tmp_path / "job.yaml").write_text("name: t\nexecutor: local\ntrain:\n  task: causal-lm\n  model: ./model\n"
                                       "  dataset: data.jsonl\n  max_steps: 1\n")
    res = run_hpcft("check", str(tmp_path / "job.yaml"), cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"hpcft: error: chat template of {model}: rendering exceeded 2 s; refused"]


@pytest.mark.parametrize("template, over", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "0.5 s"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}", "0.5 s"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
     "100000 characters (of output)"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "100000 characters (in one value)"),
    ("{% set ns = namespace(s=['x']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "100000 characters (in one value)"),
    ("{{ 'x' * 1000000000 }}", "100000 characters (in one value)"),
    ("{{ 'x' | center(1000000000) }}", "100000 characters (an argument of 1000000000)"),
    ("{{ '{:>1000000000}'.format(1) }}", "100000 characters (an argument of 1000000000)"),
    ("{{ '%1000000000d' % 1 }}", "100000 characters (an argument of 1000000000)"),
    ("{{ ('{0}' * 1000).format('y' * 1000) }}", "100000 characters (in one value)"),
    ("{{ ('a' * 1000) | replace('a', 'b' * 1000) }}", "100000 characters (in one value)"),
    ("{{ range(1) | batch(10000, 'y' * 1000) | first }}", "100000 characters (in one value)"),
    ("{{ range(100000) | map('center', 100000) | join }}", "6400000 characters (built in all)"),
    ("{{ messages | tojson(indent=1000) }}", "64 characters (the indent of tojson)"),
    ("{% set ns = namespace(s=3) %}{% for i in range(64) %}{% set ns.s = ns.s * ns.s %}{% endfor %}",
     "100000 bits (in one integer)"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "the depth of recursion Python allows"),
], ids=["loops", "exponential-macro", "output", "doubled-string", "doubled-list", "repeat", "width",
        "format-width", "percent-width", "format-fields", "replace", "batch-fill", "built", "tojson-indent",
        "big-int", "recursion"])
def test_a_template_past_a_limit_is_refused_in_one_line_naming_the_model(template, over):
    tok = TemplateTokenizer(template, {}, [], "org/evil", seconds=0.5, chars=100_000)
    with pytest.raises(RenderLimit) as info:
        tok.apply_chat_template(HI)
    assert str(info.value) == f"chat template of org/evil: rendering exceeded {over}; refused"


def test_the_time_limit_also_holds_for_all_renders_together_and_the_renderer_stops_at_once():
    """Many renders each just under the per-render limit cannot add up to a hang: the template's
    renders share one budget; the first one past it ends the pre-flight (ChatRenderer lets it through)."""
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    tok = TemplateTokenizer(forever, {}, [], "org/slow", seconds=5, total_seconds=0.3)
    for _ in range(2):  # the second finds the budget spent
        with pytest.raises(RenderLimit, match=r"^chat template of org/slow: rendering exceeded 0.3 s in all; refused$"):
            ChatRenderer(tok).examples(HI)


def test_a_long_conversation_raises_the_size_limit_and_a_model_folder_is_named_by_its_repo_id(tmp_path):
    long = [{"role": "user", "content": "a" * 5000}, {"role": "assistant", "content": "b"}]
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    tok = TemplateTokenizer(chatml, {}, [], "org/m", chars=1000)
    assert tok.apply_chat_template(long) == f"<|im_start|>user\n{'a' * 5000}<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
    with pytest.raises(RenderLimit, match=r"rendering exceeded \d+ characters \(in one value\); refused$"):
        TemplateTokenizer("{{ messages[0].content * 10 }}", {}, [], "org/m", chars=1000).apply_chat_template(long)
    snapshot = tmp_path / "hf" / "hub" / "models--Org--Name" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml}))
    assert TemplateTokenizer.from_folder(snapshot).model == "Org/Name"


def test_the_limited_renderer_loads_no_heavy_library():
    code = ("import sys; from hpcft.core.chat import TemplateTokenizer; "
            "TemplateTokenizer('{{ messages[0].content }}', {}, []).apply_chat_template([{'content': 'x'}]); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
