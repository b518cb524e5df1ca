"""A tiny Qwen2-VL and an image-text dataset for LLaMA-Factory's ``template: qwen2_vl``.

``make_tiny_qwen2_vl(dir)`` writes a repo folder laid out like ``Qwen/Qwen2-VL-2B-Instruct``:
a random ``Qwen2VLForConditionalGeneration`` (text hidden 64, 2 layers; a 2-block vision tower
of width 32), its byte-level BPE tokenizer (``Qwen2Tokenizer`` with vocab.json/merges.txt and
Qwen's vision tokens), the image/video processors and Qwen's chat template, so that
``AutoProcessor.from_pretrained`` and LLaMA-Factory 0.9.5 load it offline.

``make_vl_dataset(dir)`` writes a dataset repo: a few small PNG images (solid colours, made with
PIL) under ``images/``, and ``train.json`` in LLaMA-Factory's sharegpt form (``messages`` with
``<image>`` in the user turn, an ``images`` column of paths relative to the repo) whose answer
is the colour, plus a card whose ``configs:`` names ``train.json``. ``images/unused.png`` is
referenced by no row (staging must leave it on the hub).

Both are made with the interpreter that runs the maker; the LLaMA-Factory lane should make the
model (``python -m devtools.hub.vl_fixtures model DIR``), so that its transformers reads its
own config format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VL_ID = "Qwen/Qwen2-VL-2B-Instruct"          # served under the real id
VL_DATA_ID = "hpcft-test/color-captions"     # the image-text dataset on the hub
VL_INFO = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
           "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                    "assistant_tag": "assistant"}}
COLORS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's own chat template (its tokenizer_config.json), shortened to what the tests render
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _corpus() -> list[str]:
    words = list(COLORS) + ["What", "colour", "is", "this", "image", "?", "The", "image", "is", "a", "solid",
                            "square", "system", "user", "assistant", "You", "are", "helpful"]
    return [" ".join(words)] * 4 + [f"The image is {c}." for c in COLORS] * 4


def make_tokenizer(out: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=320, min_frequency=1, show_progress=False, special_tokens=SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None, additional_special_tokens=SPECIALS[1:])
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 4096
    tok.save_pretrained(out)
    bpe.save_model(str(out))   # vocab.json + merges.txt: the files Qwen2Tokenizer reads
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"   # what real repos carry (transformers 4.x and 5.x load it)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return tok


def make_tiny_qwen2_vl(dir) -> Path:
    """Write the model repo; LLaMA-Factory's ``template: qwen2_vl`` trains it."""
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    text = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}, "tie_word_embeddings": True,
            "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], **text)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                     do_sample=False).save_pretrained(out)
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    image = Qwen2VLImageProcessor(**pixels)
    video = Qwen2VLVideoProcessor(**pixels)
    Qwen2VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                     chat_template=CHAT_TEMPLATE).save_pretrained(out)
    (out / "README.md").write_text("# tiny Qwen2-VL (hpcft test stand-in)\n")
    for p in out.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return out


def vl_rows(n: int = 16, image_dir: str = "images") -> list[dict]:
    names = list(COLORS)
    return [{"messages": [{"role": "user", "content": "<image>What colour is this image?"},
                          {"role": "assistant", "content": f"The image is {names[i % len(names)]}."}],
             "images": [f"{image_dir}/{names[i % len(names)]}.png"]} for i in range(n)]


def write_images(folder: Path, *, unused: bool = True) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, rgb in COLORS.items():
        Image.new("RGB", (56, 56), rgb).save(folder / f"{name}.png")
        out.append(folder / f"{name}.png")
    if unused:
        Image.new("RGB", (56, 56), (0, 0, 0)).save(folder / "unused.png")
    return out


def make_vl_dataset(dir, n: int = 16) -> Path:
    """Write the dataset repo (images/, train.json, README.md with its configs)."""
    out = Path(dir)
    write_images(out / "images")
    (out / "train.json").write_text(json.dumps(vl_rows(n), indent=1))
    (out / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                   "    path: train.json\n---\n# colour captions (hpcft test stand-in)\n")
    for p in out.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return out


def make_vl_fixtures(root, python: str | None = None) -> dict:
    """Create (once, like the standard set) and return {(kind, repo_id): folder}: the tiny Qwen2-VL
    (made by ``python``, e.g. the LLaMA-Factory lane's, in a subprocess; this interpreter when None)
    and the colour-captions dataset. Serve them with ``hub.add_repo(kind, repo_id, folder)``."""
    import subprocess

    from .fixtures import _make_once

    def model(d: Path) -> None:
        if python is None:
            make_tiny_qwen2_vl(d)
        else:
            subprocess.run([python, "-m", "devtools.hub.vl_fixtures", "model", str(d)], check=True,
                           capture_output=True, cwd=Path(__file__).resolve().parents[2])

    root = Path(root)
    _make_once(root, {"qwen2-vl": model, "vl-data": make_vl_dataset})
    return {("model", VL_ID): root / "qwen2-vl", ("dataset", VL_DATA_ID): root / "vl-data"}


def main(argv: list[str]) -> int:
    what, dest = argv
    (make_tiny_qwen2_vl if what == "model" else make_vl_dataset)(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
