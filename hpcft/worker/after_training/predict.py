"""Use a trained model: classify or generate, offline, on CPU or the job's device.

Started by ``hpcft predict`` as a subprocess on the login node, or inside a Slurm job with
``--submit`` (the login side never imports this module)::

    python -m hpcft.worker.after_training.predict --model DIR [--columns a,b] [--file in.jsonl] [--out out.jsonl] [TEXT ...]

A classifier (``*ForSequenceClassification``) gives the label (names from the dataset, saved in
the model's ``id2label`` at training time) and the score of each input, and every label's score.
A generative model (``*ForCausalLM``) gives the generation; a chat template is used when the
tokenizer has one. For a sentence-pair classifier, a text is ``first ||| second``, and a JSONL
line carries the dataset's column names (``{"sentence1": ..., "sentence2": ...}``) or
``text``/``text_pair``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from hpcft.worker.errors import DeviceError, PredictError

PAIR_SEP = "|||"


@dataclass
class Example:
    text: str
    pair: Optional[str] = None

    def shown(self) -> str:
        return self.text if self.pair is None else f"{self.text} {PAIR_SEP} {self.pair}"


def parse_text(text: str) -> Example:
    if PAIR_SEP in text:
        a, b = text.split(PAIR_SEP, 1)
        return Example(a.strip(), b.strip())
    return Example(text)


def parse_record(obj: Any, columns: list[str], where: str) -> Example:
    if isinstance(obj, str):
        return parse_text(obj)
    if not isinstance(obj, dict):
        raise PredictError(f"{where}: expected a JSON object or string, got {type(obj).__name__}")
    for keys in (columns, ["text", "text_pair"], ["sentence1", "sentence2"], ["sentence"], ["prompt"]):
        if keys and keys[0] in obj:
            second = obj.get(keys[1]) if len(keys) > 1 else None
            return Example(str(obj[keys[0]]), None if second is None else str(second))
    wanted = ", ".join(dict.fromkeys([*columns, "text"]))
    raise PredictError(f"{where}: no text field; give one of: {wanted} (keys here: {', '.join(obj) or 'none'})")


def read_jsonl(path: Path, columns: list[str]) -> list[Example]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictError(f"{path}:{n}: not JSON: {exc.msg}") from None
        out.append(parse_record(obj, columns, f"{path}:{n}"))
    return out


class Predictor:
    """A saved model folder, loaded once (offline); ``predict`` maps examples to result dicts."""

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int = 512, max_new_tokens: int = 64):
        import torch
        from transformers import AutoConfig, AutoTokenizer

        self.torch = torch
        self.dir = Path(model_dir)
        if not (self.dir / "config.json").is_file():
            raise PredictError(f"no model in {self.dir} (config.json missing): has the run finished?")
        config = AutoConfig.from_pretrained(str(self.dir))
        archs = config.architectures or []
        self.kind = "generate" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) else "classify"
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.dir))
        if self.kind == "classify":
            from transformers import AutoModelForSequenceClassification as Auto
        else:
            from transformers import AutoModelForCausalLM as Auto
        self.device = torch.device({"gpu": "cuda", "cuda": "cuda", "npu": "npu"}.get(device, "cpu"))
        self.model = Auto.from_pretrained(str(self.dir)).to(self.device).eval()
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        id2label = getattr(self.model.config, "id2label", None) or {}
        self.labels = {int(k): str(v) for k, v in id2label.items()}

    def predict(self, examples: list[Example], batch_size: int = 16) -> list[dict]:
        if self.kind != "classify":
            return [self._generate(e) for e in examples]
        out: list[Optional[dict]] = [None] * len(examples)
        for paired in (False, True):  # the tokenizer takes all pairs or no pairs in one batch
            idx = [i for i, e in enumerate(examples) if (e.pair is not None) == paired]
            for k in range(0, len(idx), batch_size):
                chunk = idx[k:k + batch_size]
                for i, row in zip(chunk, self._classify([examples[i] for i in chunk])):
                    out[i] = row
        return [r for r in out if r is not None]

    def _classify(self, batch: list[Example]) -> list[dict]:
        torch = self.torch
        pairs = [e.pair for e in batch]
        enc = self.tokenizer([e.text for e in batch], pairs if pairs[0] is not None else None,
                             padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float().cpu()
        if logits.shape[-1] == 1:  # a regression head: the value itself
            return [{"input": e.shown(), "value": float(v)} for e, v in zip(batch, logits[:, 0])]
        probs = torch.softmax(logits, dim=-1)
        rows = []
        for e, p in zip(batch, probs):
            best = int(p.argmax())
            scores = {self.labels.get(j, str(j)): round(float(p[j]), 6) for j in range(p.shape[0])}
            rows.append({"input": e.shown(), "label": self.labels.get(best, str(best)),
                         "score": round(float(p[best]), 6), "scores": scores})
        return rows

    def _generate(self, e: Example) -> dict:
        torch = self.torch
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": e.text}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
        else:
            ids = tok(e.text, return_tensors="pt")
        ids = {k: v.to(self.device) for k, v in ids.items()}
        with torch.inference_mode():
            gen = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                      else tok.eos_token_id)
        text = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return {"input": e.shown(), "generation": text}

    def chat(self, message: str) -> str:
        return self._generate(Example(message))["generation"]


def format_row(row: dict) -> str:
    if "generation" in row:
        return f"{row['input']}\n-> {row['generation']}"
    if "value" in row:
        return f"{row['value']:.4f}\t{row['input']}"
    return f"{row['label']}\t{row['score']:.4f}\t{row['input']}"


def run(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.after_training.predict")
    p.add_argument("texts", nargs="*")
    p.add_argument("--model", required=True)
    p.add_argument("--file")
    p.add_argument("--out")
    p.add_argument("--columns", default="", help="the dataset's text columns, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(list(argv) if argv is not None else None)
    columns = [c for c in a.columns.split(",") if c]
    try:
        examples = [parse_text(t) for t in a.texts] + (read_jsonl(Path(a.file), columns) if a.file else [])
        if not examples:
            raise PredictError("nothing to predict: give texts or --file in.jsonl")
        t0 = time.time()
        from hpcft.worker.taskenv import apply_device_env

        apply_device_env(a.device)      # an NPU job's own devices (Slurm's allocation), before torch_npu
        import torch

        if a.device == "npu":
            from hpcft.worker.device import import_npu

            import_npu()
        if a.threads:
            torch.set_num_threads(a.threads)
        pred = Predictor(Path(a.model), a.device, max_new_tokens=a.max_new_tokens)
        t_load = time.time() - t0
        rows = pred.predict(examples)
    except (PredictError, DeviceError, OSError) as exc:
        print(f"hpcft: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (PredictError, DeviceError)) else 1
    for row in rows:
        print(format_row(row))
    if a.out:
        from hpcft.core.atomic import atomic_write_text

        atomic_write_text(a.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"hpcft: {len(rows)} predictions written to {a.out}", file=sys.stderr)
    print(f"hpcft: {pred.kind} model {a.model}: loaded in {t_load:.2f} s, {len(rows)} inputs in "
          f"{time.time() - t0 - t_load:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run())
