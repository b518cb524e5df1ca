"""The model side of predict and serve (hpcft/worker/after_training/predict.py, serve.py), in process, on tiny
models made here: a BERT classifier with label names and a GPT-2-shaped generative model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpcft.worker.after_training import predict as wp

pytestmark = pytest.mark.slow  # builds two models and loads transformers (and gradio)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from devtools.hub.fixtures import make_tiny_bert

    root = tmp_path_factory.mktemp("models")
    bert = make_tiny_bert(root / "bert", extra_formats=False)
    tok = AutoTokenizer.from_pretrained(str(bert))
    clf = root / "clf"
    AutoModelForSequenceClassification.from_pretrained(
        str(bert), num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}).save_pretrained(str(clf))
    tok.save_pretrained(str(clf))
    gen = root / "gen"
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)).save_pretrained(str(gen))
    tok.save_pretrained(str(gen))
    return {"clf": clf, "gen": gen}


def test_classifier_gives_named_labels_and_scores(models):
    pred = wp.Predictor(models["clf"])
    rows = pred.predict([wp.parse_text("good film"), wp.parse_text("the plot ||| the story")])
    assert pred.kind == "classify"
    for row in rows:
        assert row["label"] in ("negative", "positive") and set(row["scores"]) == {"negative", "positive"}
        assert row["score"] == max(row["scores"].values()) and sum(row["scores"].values()) == pytest.approx(1, 1e-4)
    assert rows[1]["input"] == "the plot ||| the story"


def test_generative_model_generates(models):
    pred = wp.Predictor(models["gen"], max_new_tokens=5)
    row = pred.predict([wp.Example("the film")])[0]
    assert pred.kind == "generate" and isinstance(row["generation"], str) and row["input"] == "the film"


def test_jsonl_inputs_use_the_dataset_columns_and_report_bad_lines(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"sentence1": "a", "sentence2": "b"}\n\n"plain text"\n{"text": "t", "text_pair": "u"}\n')
    ex = wp.read_jsonl(f, ["sentence1", "sentence2"])
    assert [(e.text, e.pair) for e in ex] == [("a", "b"), ("plain text", None), ("t", "u")]
    f.write_text('{"review": 1}\n')
    with pytest.raises(wp.PredictError, match=r"in.jsonl:1: no text field; give one of: sentence, text"):
        wp.read_jsonl(f, ["sentence"])
    f.write_text("{not json\n")
    with pytest.raises(wp.PredictError, match=r"in.jsonl:1: not JSON"):
        wp.read_jsonl(f, [])


def test_worker_cli_writes_jsonl_and_fails_cleanly(models, tmp_path):
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "hpcft.worker.after_training.predict", "--model", str(models["clf"]), "--out", str(out), "good film"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["input"] == "good film" and proc.stdout.count("\t") == 2
    missing = subprocess.run([sys.executable, "-m", "hpcft.worker.after_training.predict", "--model", str(tmp_path), "x"],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and f"no model in {tmp_path} (config.json missing)" in missing.stderr


def test_serve_builds_a_label_app_and_a_chat_app(models):
    pytest.importorskip("gradio")
    import gradio as gr

    from hpcft.worker.serving.demo import build

    clf = build(wp.Predictor(models["clf"]), "t", ["sentence1", "sentence2"])
    assert isinstance(clf, gr.Interface) and [c.label for c in clf.input_components] == ["sentence1", "sentence2"]
    assert isinstance(clf.output_components[0], gr.Label)
    assert isinstance(build(wp.Predictor(models["gen"]), "t"), gr.ChatInterface)
