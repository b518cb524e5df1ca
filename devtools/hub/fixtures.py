"""Deterministic generators for the repo folders the loopback hub serves.

There is no internet here, so the "bert-base-uncased", "glue" and "yelp_review_full"
that tests and the README demo download are made here: a tiny BERT whose WordPiece
vocabulary covers every word of the synthetic datasets, GLUE-shaped parquet datasets
whose labels are a learnable function of the words, and a numpy-only GLUE metric.

Every generator writes the same bytes for the same arguments (seeded RNGs, no
timestamps), so the hub computes the same commit sha across runs.  Generators do
not cache themselves; callers (a session-scoped pytest fixture, ``server.py``'s
standalone mode) create the folders once and reuse them.
"""

from __future__ import annotations

import io
import json
import random
import textwrap
import zipfile
from pathlib import Path

# --------------------------------------------------------------------------- words
# The label of every synthetic example is a function of which of these lists its
# words come from, so a bag-of-words model (and a tiny BERT) can learn it.
POSITIVE = """good great excellent wonderful amazing delightful charming brilliant superb
lovely enjoyable fantastic marvelous pleasant beautiful moving hilarious touching fresh
clever witty gorgeous stunning masterful engaging heartfelt inspired joyful thrilling
elegant""".split()
NEGATIVE = """bad awful terrible boring dull poor weak horrible dreadful tedious clumsy
mediocre lifeless bland pointless messy stale annoying painful lazy hollow forgettable
shallow sloppy tiresome ugly unfunny clumsy dismal incoherent""".split()
SUBJECTS = """film movie story plot actor actress director script scene ending cast music
camera performance dialogue soundtrack picture drama comedy thriller sequel character
premise pacing screenplay""".split()
LINKS = "is was feels seems looks remains becomes proves".split()
ADVERBS = "very quite rather truly really mostly fairly deeply simply always".split()
# Ungrammatical forms for CoLA: a sentence containing one of these is "unacceptable".
BROKEN = """goed runned childs mouses themself hisself writed bringed taked eated buyed
thinked swimmed catched teached sleeped""".split()
GRAMMATICAL_VERBS = """went ran wrote brought took ate bought thought swam caught taught
slept saw found made""".split()
PEOPLE = ["john", "mary", "the teacher", "the doctor", "my sister", "our neighbor", "the children",
          "the students", "the farmer", "a tourist"]
OBJECTS = ["the book", "a letter", "the apples", "some bread", "the ball", "a fish", "the lesson",
           "the keys", "the car", "a song"]
# MRPC: pairs from the same topic are paraphrases, pairs across topics are not.
TOPICS = {
    "finance": "bank shares market investors profit stock quarter revenue dollar earnings".split(),
    "sports": "team match season coach players league goal championship stadium victory".split(),
    "weather": "storm rain temperatures forecast winds snow flooding clouds heat coast".split(),
    "tech": "software company users device chip network update startup server data".split(),
    "health": "hospital patients doctors vaccine disease treatment study virus clinic drug".split(),
    "politics": "senate election vote president minister parliament policy campaign law court".split(),
}
VERBS = "said reported announced expected rose fell showed added warned claimed".split()
FUNCTION = "near the a of in on to and for with by at from after before this that".split()
# Yelp: five classes, one word list per star rating.
STARS = [
    "horrible disgusting rude worst filthy inedible nasty appalling".split(),
    "disappointing slow overpriced soggy cold greasy underwhelming noisy".split(),
    "okay average decent fine ordinary acceptable standard passable".split(),
    "tasty friendly nice cozy solid satisfying cheerful generous".split(),
    "outstanding perfect incredible phenomenal exceptional flawless divine spectacular".split(),
]
PLACES = "food service staff pizza pasta burger coffee waiter table dessert menu place".split()
# Generic words so the vocabulary has a realistic ~1k size beyond the task words.
FILLER = [f"{a}{b}{c}" for a in ("pre", "re", "un", "over", "out", "in", "dis", "co")
          for b in ("play", "turn", "view", "set", "work", "load", "run", "form", "cast", "hold",
                    "mark", "line", "side", "time", "way", "light", "stand", "take")
          for c in ("", "s", "ed", "ing")]


FIXTURE_VERSION = "3"  # bump when generated content changes, to refresh cached fixture dirs


def _rng(*parts) -> random.Random:
    return random.Random("hpcft-fixture:" + ":".join(map(str, parts)))


def _sentiment_sentence(r: random.Random, words: list[str]) -> str:
    subj = r.choice(SUBJECTS)
    parts = [r.choice(["the", "this", "that"]), subj, r.choice(LINKS)]
    if r.random() < 0.5:
        parts.append(r.choice(ADVERBS))
    parts.append(r.choice(words))
    if r.random() < 0.5:
        parts += ["and", r.choice(words)]
    return " ".join(parts) + " ."


def _cola_sentence(r: random.Random, acceptable: bool) -> str:
    verb = r.choice(GRAMMATICAL_VERBS if acceptable else BROKEN)
    return f"{r.choice(PEOPLE).capitalize()} {verb} {r.choice(OBJECTS)} {r.choice(('with', 'for', 'near'))} {r.choice(PEOPLE)} ."


def _topic_sentence(r: random.Random, topic: str) -> list[str]:
    w = TOPICS[topic]
    return ["the", r.choice(w), r.choice(VERBS), r.choice(FUNCTION), r.choice(w), r.choice(FUNCTION), "the", r.choice(w)]


def _paraphrase(r: random.Random, words: list[str], topic: str) -> list[str]:
    # A light rewrite: swap two words and replace one with another of the same topic.
    out = list(words)
    i, j = r.sample(range(len(out)), 2)
    out[i], out[j] = out[j], out[i]
    out[r.randrange(len(out))] = r.choice(TOPICS[topic])
    return out


def glue_rows(config: str, split: str, n: int) -> list[dict]:
    """Synthetic rows for one GLUE config and split (test labels are -1, as in GLUE)."""
    r = _rng("glue", config, split)
    rows = []
    for idx in range(n):
        label = idx % 2 if split != "train" else r.randrange(2)
        if config == "mrpc":
            topic = r.choice(sorted(TOPICS))
            s1 = _topic_sentence(r, topic)
            if label:
                s2 = _paraphrase(r, s1, topic)
            else:
                s2 = _topic_sentence(r, r.choice([t for t in sorted(TOPICS) if t != topic]))
            row = {"sentence1": " ".join(s1).capitalize() + " .", "sentence2": " ".join(s2).capitalize() + " ."}
        elif config == "cola":
            row = {"sentence": _cola_sentence(r, bool(label))}
        elif config == "sst2":
            row = {"sentence": _sentiment_sentence(r, POSITIVE if label else NEGATIVE)}
        else:
            raise ValueError(f"unknown GLUE config {config!r}")
        row["label"] = -1 if split == "test" else label
        row["idx"] = idx
        rows.append(row)
    return rows


def yelp_rows(split: str, n: int) -> list[dict]:
    r = _rng("yelp", split)
    rows = []
    for i in range(n):
        label = i % 5 if split != "train" else r.randrange(5)
        words = STARS[label]
        text = (f"the {r.choice(PLACES)} was {r.choice(ADVERBS)} {r.choice(words)} . "
                f"{r.choice(['we', 'i', 'they'])} found the {r.choice(PLACES)} {r.choice(words)} and "
                f"the {r.choice(PLACES)} {r.choice(LINKS)} {r.choice(words)} .")
        rows.append({"label": label, "text": text})
    return rows


def corpus() -> list[str]:
    """Text the WordPiece tokenizer is trained on: every word any generator can emit."""
    words = (POSITIVE + NEGATIVE + SUBJECTS + LINKS + ADVERBS + BROKEN + GRAMMATICAL_VERBS + PEOPLE
             + " ".join(OBJECTS + PEOPLE).split() + VERBS + FUNCTION + PLACES + FILLER
             + [w for ws in TOPICS.values() for w in ws] + [w for ws in STARS for w in ws]
             + "and we i they . , ! ? the this that was".split())
    lines = [" ".join(words)] * 3
    for cfg in ("mrpc", "cola", "sst2"):
        for row in glue_rows(cfg, "train", 200):
            lines.append(" ".join(str(v) for k, v in row.items() if k.startswith("sentence")))
    lines += [row["text"] for row in yelp_rows("train", 200)]
    return lines


# --------------------------------------------------------------------------- model
README_MODEL = """---
language: en
license: apache-2.0
tags:
- exbert
datasets:
- bookcorpus
- wikipedia
---

# BERT base model (uncased) -- hpcft test stand-in

A 2-layer, 32-wide BERT with a WordPiece vocabulary trained on the synthetic GLUE
and Yelp fixtures.  Same file layout as the real repository, far fewer bytes.
"""

GITATTRIBUTES = "".join(f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in (
    "bin", "h5", "msgpack", "onnx", "ot", "safetensors", "mlmodel", "parquet", "arrow"))


def _deterministic_torch_save(obj, path: Path) -> None:
    """torch.save, but with byte-identical output across runs.

    torch >= 2.3 writes a random ``.data/serialization_id`` record; rewrite the zip with
    a fixed one (and no timestamps) so the repo sha stays stable.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(".data/serialization_id"):
                data = b"0" * len(data)
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zout.writestr(zi, data)
    path.write_bytes(out.getvalue())


def _write_bert_tokenizer(out: Path, vocab: dict, *, lowercase: bool) -> None:
    """The tokenizer files of a real BERT repo, written with ``tokenizers`` alone.

    Not ``BertTokenizer(...).save_pretrained``: its constructor and its output differ between
    transformers 4.x and 5.x (5.x can write ``"tokenizer_class": "TokenizersBackend"``, which
    4.x cannot load), and the fixtures must load under both compatibility lanes. Real repos
    carry ``BertTokenizer``, ``vocab.txt`` and ``special_tokens_map.json``; so do these.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                "sep_token": "[SEP]", "mask_token": "[MASK]"}
    tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                               strip_accents=None, lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.add_special_tokens(list(specials.values()))
    tk.save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "do_lower_case": lowercase, "model_max_length": 512, "strip_accents": None,
         "tokenize_chinese_chars": True, "tokenizer_class": "BertTokenizer"}, indent=2, sort_keys=True) + "\n")


def make_tiny_bert(dir, *, extra_formats: bool = True, cased: bool = False) -> Path:
    """Write a tiny BERT repo folder; return its path.

    ``from_pretrained(dir, num_labels=2)`` loads it as BertForSequenceClassification
    (the checkpoint is a BertForMaskedLM, like the real bert-base-uncased, so the
    classifier head is newly initialised -- the usual warning included).
    """
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=not cased)
    wp.train_from_iterator(corpus(), vocab_size=2000, min_frequency=1, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # The trainer breaks ties between equally frequent merges differently run to run,
    # so keep only what is stable -- specials, characters, ##characters and the whole
    # words -- in a fixed order.  Every fixture word stays one token.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trained = set(wp.get_vocab())
    words = {w for line in corpus() for w in (line if cased else line.lower()).split()}
    chars = sorted(t for t in trained if len(t) == 1 or (t.startswith("##") and len(t) == 3))
    whole = sorted((trained & words) | {w for w in words if w.isalpha()})
    vocab = {t: i for i, t in enumerate(specials + chars + [w for w in whole if w not in chars])}
    _write_bert_tokenizer(out, vocab, lowercase=not cased)

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        pad_token_id=0)
    model = BertForMaskedLM(config)
    model.save_pretrained(out)  # model.safetensors + config.json
    for p in out.iterdir():  # safetensors writes 0600 regardless of umask
        p.chmod(0o644)
    (out / "README.md").write_text(README_MODEL.replace("uncased", "cased") if cased else README_MODEL)
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    if extra_formats:
        _deterministic_torch_save({k: v.contiguous() for k, v in model.state_dict().items()},
                                  out / "pytorch_model.bin")
        r = _rng("extra-formats")
        for name, size in (("tf_model.h5", 300_000), ("flax_model.msgpack", 250_000),
                           ("model.onnx", 400_000), ("rust_model.ot", 200_000),
                           ("coreml/model.mlmodel", 150_000)):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(r.randbytes(size))
    return out


# --------------------------------------------------------------------------- datasets
GLUE_FEATURES = {
    "mrpc": [("sentence1", "string"), ("sentence2", "string"),
             ("label", ["not_equivalent", "equivalent"]), ("idx", "int32")],
    "cola": [("sentence", "string"), ("label", ["unacceptable", "acceptable"]), ("idx", "int32")],
    "sst2": [("sentence", "string"), ("label", ["negative", "positive"]), ("idx", "int32")],
}
YELP_FEATURES = [("label", ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]), ("text", "string")]


def _write_parquet(path: Path, rows: list[dict], features) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int32": pa.int32()}
    schema = pa.schema([(name, types[t] if isinstance(t, str) else pa.int64()) for name, t in features])
    table = pa.Table.from_pylist(rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")
    return path.stat().st_size


def _feature_yaml(features) -> list[dict]:
    out = []
    for name, t in features:
        if isinstance(t, str):
            out.append({"name": name, "dtype": t})
        else:  # ClassLabel: load_dataset then knows the label names
            out.append({"name": name, "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(t)}}}})
    return out


def _write_dataset(out: Path, configs: dict, title: str) -> Path:
    """configs: {config_name: (features, {split: rows})}; writes parquet + README."""
    import yaml

    infos, cfgs = [], []
    for cfg, (features, splits) in configs.items():
        split_info, data_files = [], []
        for split, rows in splits.items():
            prefix = f"{cfg}/" if cfg != "default" else "data/"
            nbytes = _write_parquet(out / f"{prefix}{split}-00000-of-00001.parquet", rows, features)
            split_info.append({"name": split, "num_bytes": nbytes, "num_examples": len(rows)})
            data_files.append({"split": split, "path": f"{prefix}{split}-*"})
        info = {"config_name": cfg} if cfg != "default" else {}
        info.update({"features": _feature_yaml(features), "splits": split_info,
                     "download_size": sum(s["num_bytes"] for s in split_info),
                     "dataset_size": sum(s["num_bytes"] for s in split_info)})
        infos.append(info)
        cfgs.append({"config_name": cfg, "data_files": data_files})
    meta = {"dataset_info": infos if len(infos) > 1 or "config_name" in infos[0] else infos[0],
            "configs": cfgs}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    (out / "README.md").write_text(f"---\n{front}---\n\n# {title}\n\nSynthetic, learnable stand-in "
                                   "generated by hpcft's test fixtures.\n", encoding="utf-8")
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    return out


def make_glue_dataset(dir, configs=("mrpc", "cola", "sst2"), n_train: int = 512, n_val: int = 128,
                      n_test: int = 64) -> Path:
    """GLUE-shaped dataset repo: README YAML ``configs:``/``dataset_info`` + parquet per split."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {}
    for cfg in configs:
        spec[cfg] = (GLUE_FEATURES[cfg], {
            "train": glue_rows(cfg, "train", n_train),
            "validation": glue_rows(cfg, "validation", n_val),
            "test": glue_rows(cfg, "test", n_test)})
    return _write_dataset(out, spec, "GLUE (synthetic)")


def make_text_dataset(dir, name: str = "yelp_review_full", n_train: int = 500, n_test: int = 100) -> Path:
    """Single-config ``text``/``label`` (5 classes) dataset repo, like Yelp/yelp_review_full."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    return _write_dataset(out, {"default": (YELP_FEATURES, {
        "train": yelp_rows("train", n_train), "test": yelp_rows("test", n_test)})}, name)


# --------------------------------------------------------------------------- metric
# The metric script is a real module next to this file (readable, lintable); it is
# copied into the repo folder as glue.py.
GLUE_METRIC_SOURCE = Path(__file__).with_name("glue_metric.py")

METRIC_README = """---
title: GLUE
emoji: 🤗
colorFrom: blue
colorTo: red
sdk: gradio
sdk_version: 3.19.1
app_file: app.py
pinned: false
tags:
- evaluate
- metric
description: >-
  GLUE, the General Language Understanding Evaluation benchmark (numpy-only stand-in).
---

# Metric Card for GLUE

Returns accuracy (and F1 for mrpc/qqp), Matthews correlation for cola, Pearson and
Spearman correlation for stsb.
"""


def make_glue_metric(dir) -> Path:
    """An evaluate metric "space": glue.py + README.md + requirements.txt + app.py."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "glue.py").write_bytes(GLUE_METRIC_SOURCE.read_bytes())
    (out / "README.md").write_text(METRIC_README, encoding="utf-8")
    (out / "requirements.txt").write_text("evaluate\nnumpy\ndatasets\n")
    (out / "app.py").write_text(textwrap.dedent("""\
        import evaluate
        from evaluate.utils import launch_gradio_widget

        module = evaluate.load("glue", "sst2")
        launch_gradio_widget(module)
        """))
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    return out


def make_standard_fixtures(root) -> dict:
    """Create (once) the standard fixture set under ``root``; return {(kind, repo_id): folder}.

    A ``<name>.done`` marker holding FIXTURE_VERSION makes repeated calls (pytest sessions,
    the standalone server) cheap; an flock keeps concurrent callers (xdist) from racing.
    """
    root = Path(root)
    _make_once(root, {
        "bert-uncased": lambda d: make_tiny_bert(d),
        "bert-cased": lambda d: make_tiny_bert(d, cased=True),
        "glue": lambda d: make_glue_dataset(d),
        "yelp": lambda d: make_text_dataset(d),
        "glue-metric": lambda d: make_glue_metric(d),
    })
    return {
        ("model", "google-bert/bert-base-uncased"): root / "bert-uncased",
        ("model", "google-bert/bert-base-cased"): root / "bert-cased",
        ("dataset", "nyu-mll/glue"): root / "glue",
        ("dataset", "Yelp/yelp_review_full"): root / "yelp",
        ("space", "evaluate-metric/glue"): root / "glue-metric",
    }


def _make_once(root: Path, makers: dict) -> None:
    """Run each maker into ``root/NAME`` unless its ``NAME.done`` marker has this FIXTURE_VERSION."""
    import fcntl
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, make in makers.items():
            d = root / name
            done = root / f"{name}.done"  # outside the folder, or the hub would serve it
            if not done.exists() or done.read_text().strip() != FIXTURE_VERSION:
                shutil.rmtree(d, ignore_errors=True)
                make(d)
                done.write_text(FIXTURE_VERSION + "\n")


# --------------------------------------------------------------------------- Modelers (openMind hub)
def make_modelers_bert(dir) -> Path:
    """``PyTorch-NPU/bert_base_cased`` as the openMind CoLA tutorial loads it: the tiny cased BERT,
    plus the decoys such repos carry (a MindSpore checkpoint, TF/Flax/ONNX/CoreML weights, .bin)."""
    out = make_tiny_bert(dir, cased=True)
    (out / "mindspore_model.ckpt").write_bytes(_rng("om-ckpt").randbytes(120_000))
    (out / "README.md").write_text(README_MODEL.replace("uncased", "cased").replace(
        "hpcft test stand-in", "openMind (Modelers) hpcft test stand-in"))
    return out


def make_modelers_glue(dir) -> Path:
    """``AI_Connect/glue``: GLUE-shaped parquet in one folder per config (cola/, mrpc/, sst2/) with the
    card's ``configs:``, plus the legacy loading script (a decoy: staging never needs it)."""
    out = make_glue_dataset(dir)
    (out / "glue.py").write_text("# legacy GLUE loading script; hpcft stages the parquet files instead\n"
                                 + "# " + "x" * 2000 + "\n")
    return out


def make_modelers_fixtures(root) -> dict:
    """The two repos of the openMind CoLA tutorial, served under their Modelers ids."""
    root = Path(root)
    _make_once(root, {"om-bert-cased": make_modelers_bert, "om-glue": make_modelers_glue})
    return {
        ("model", "PyTorch-NPU/bert_base_cased"): root / "om-bert-cased",
        ("dataset", "AI_Connect/glue"): root / "om-glue",
    }
