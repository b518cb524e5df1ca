"""The transformers backend of ``hpcft serve --api``: any device (CPU included), a LoRA run served
with its adapter on the base model (peft, no merge), concurrent requests batched.

Batching: requests wait in a queue; one engine thread takes up to ``max_batch`` of them that
share their sampling settings, left-pads the prompts and runs ONE ``model.generate`` for all of
them. A stopping criterion sees every new token of every row at each step: it streams the
row's new text to its request, and ends the row at the end-of-turn token, at one of the
request's ``stop`` strings or at its ``max_tokens``, while the other rows go on (generate itself is
given no EOS: the criterion decides per row, so vLLM's ``ignore_eos`` works per request). Requests that
arrive meanwhile form the next batch. On a small model the per-step cost barely grows with the
batch, so 8 concurrent requests take little longer than one (benchmarks/bench_serve.py).

One request never stalls the others: the oldest waiting request is always in the next batch
(whatever its settings), a batch that fails is run again row by row for the rows that got no
text yet (so only the request that breaks ``generate`` fails), and a request whose listener is
gone is cancelled rather than breaking the batch. :meth:`Engine.check` refuses what
``generate`` cannot take (a non-finite or out-of-range temperature or top_p) before it queues.

The stop tokens are the model's own end-of-turn tokens: the tokenizer's EOS, the generation
config's ``eos_token_id`` (one or a list), and the end-of-turn markers of the common chat
templates that the vocabulary has (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ...).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from hpcft.core.chat import end_of_turn
from hpcft.worker.errors import WorkerError

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "<end_of_turn>",
               "<|eom_id|>", "</s>", "<|user|>", "<|observation|>")


class ApiError(WorkerError):
    """A request the server refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass(eq=False)  # a request is itself: two alike are still two (the batching uses identity)
class Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0                      # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False                      # vLLM's extra parameter: only max_tokens ends the row
    emit: Callable[[dict], None] = print          # called from the engine thread: {"text"} ... {"finish", ...}
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    sent: int = 0                                 # characters of text already emitted
    finish: Optional[str] = None
    cancelled: bool = False

    @property
    def sampling(self) -> tuple:
        greedy = self.temperature <= 1e-5
        return ("greedy",) if greedy else ("sample", round(self.temperature, 4), round(self.top_p, 4))


def load(model_dir: Path, base_dir: Optional[Path], device: str, trust_remote_code: bool = False,
         quantization: Optional[dict] = None):
    """(model, tokenizer): a full model folder, or a LoRA adapter folder on its base model;
    ``trust_remote_code`` only when the run's job said so. ``quantization`` (a QLoRA run's
    ``train.quantization``, served with ``--base-weights quantized``): the base is loaded by
    bitsandbytes as it was trained on, placed on the device while it loads."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    dev = torch.device({"gpu": "cuda", "cuda": "cuda", "npu": "npu"}.get(device, "cpu"))
    if device == "npu":
        import torch_npu  # noqa: F401  (registers the npu device)
    adapter = (model_dir / "adapter_config.json").is_file()
    if adapter:
        import json

        from peft import PeftModel

        base = base_dir or json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not (Path(base) / "config.json").is_file():
            raise WorkerError(f"{model_dir} is a LoRA adapter whose base model {base} is not here; "
                              "give --base DIR (hpcft serve does, from the run's metrics.json)")
        kw = _quantized(quantization, dev) if quantization is not None else {}
        model = AutoModelForCausalLM.from_pretrained(str(base), trust_remote_code=trust_remote_code, **kw)
        model = PeftModel.from_pretrained(model, str(model_dir))  # the adapter as trained: no merge
        if kw:
            tokenizer = _tokenizer(model_dir, base_dir, trust_remote_code)
            return model.eval(), tokenizer   # placed while loading (bitsandbytes' weights do not move)
    elif (model_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    else:
        raise WorkerError(f"no model in {model_dir} (neither config.json nor adapter_config.json)")
    return model.to(dev).eval(), _tokenizer(model_dir, base_dir, trust_remote_code)


def _tokenizer(model_dir: Path, base_dir: Optional[Path], trust_remote_code: bool):
    from transformers import AutoTokenizer

    tok_dir = model_dir if (model_dir / "tokenizer_config.json").is_file() else Path(base_dir or model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantized(quantization: dict, dev) -> dict:
    """from_pretrained's arguments for the base as a QLoRA run trained on it (4/8-bit, its quant
    type, double quantization and compute dtype; bf16 compute unless the job named one)."""
    from hpcft.core.quantization import QuantizationSpec
    from hpcft.worker.engines.native.qlora import bnb_config, require

    require()
    spec = QuantizationSpec.model_validate(quantization)
    where = dev.index if dev.type == "cuda" and dev.index is not None else str(dev)
    return {"quantization_config": bnb_config(spec, "bf16"), "device_map": {"": where}}


def stop_token_ids(tokenizer, model) -> list[int]:
    """The model's end-of-turn tokens (see the module doc)."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(gen, "eos_token_id", None)):
        ids += value if isinstance(value, list) else [value] if value is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN if t in vocab]
    own = end_of_turn(tokenizer)   # what the model's own chat template ends a reply with (core.chat)
    if own in vocab:
        ids.append(vocab[own])
    return sorted(set(int(i) for i in ids))


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The prompt as the model's own chat template writes it, ending with the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError("this model has no chat template; use /v1/completions with a plain prompt",
                       param="messages", code="no_chat_template")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # a template's own raise_exception(), e.g. roles out of order
        raise ApiError(f"the model's chat template refused the messages: {exc}", param="messages") from None


class Engine:
    """One engine thread over one model; :meth:`submit` is thread-safe."""

    def __init__(self, model, tokenizer, max_batch: int = 8, max_wait_s: float = 0.02, context: int = 0):
        import torch

        self.torch, self.model, self.tokenizer = torch, model, tokenizer
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.context = context or int(getattr(model.config, "max_position_embeddings", 0) or 4096)
        self.pending: "queue.Queue[Request]" = queue.Queue()
        self.held: list[Request] = []
        self.batches: list[int] = []                  # sizes of the batches run (the benchmark reports them)
        self._thread = threading.Thread(target=self._loop, name="hpcft-engine", daemon=True)
        self._thread.start()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not text.startswith(self.tokenizer.bos_token or "\0"))[
            "input_ids"]

    def check(self, req: Request) -> None:
        for name, value, lo, hi in (("temperature", req.temperature, 0.0, 2.0), ("top_p", req.top_p, 0.0, 1.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                raise ApiError(f"{name} must be a number >= {lo:g} and <= {hi:g}", param=name)
        if not isinstance(req.max_tokens, int) or req.max_tokens < 1:
            raise ApiError("max_tokens must be an integer >= 1", param="max_tokens")
        if len(req.prompt_ids) + req.max_tokens > self.context:
            raise ApiError(f"the prompt ({len(req.prompt_ids)} tokens) plus max_tokens ({req.max_tokens}) exceed "
                           f"the model's context of {self.context} tokens", param="max_tokens",
                           code="context_length_exceeded")

    def submit(self, req: Request) -> Request:
        self.check(req)
        self.pending.put(req)
        return req

    # ------------------------------------------------------------------ the engine thread
    def _take(self) -> list[Request]:
        """Up to max_batch waiting requests that share their sampling settings (held ones first)."""
        if not self.held:
            self.held.append(self.pending.get())
        deadline = time.monotonic() + self.max_wait_s
        while len(self.held) < 4 * self.max_batch:
            try:
                self.held.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        self.held = [r for r in self.held if not r.cancelled]
        if not self.held:
            return []
        first = self.held[0]  # the oldest is always taken, so no request waits behind others for good
        batch = [first] + [r for r in self.held[1:] if r.sampling == first.sampling][:self.max_batch - 1]
        self.held = [r for r in self.held if r not in batch]
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        """Run ``batch``; when it fails, the rows that got no text yet run again alone, so the error
        ends only the request that causes it (a row that streamed already cannot start over)."""
        try:
            self.run_batch(batch)
            return
        except Exception as exc:  # the server must answer the requests, not die silently
            error = f"{type(exc).__name__}: {exc}"
        fresh = [r for r in batch if r.finish is None and not r.tokens and r.sent == 0]
        for r in batch:
            if r.finish is None and (len(batch) == 1 or r not in fresh):
                self._fail(r, error)
        if len(batch) > 1:
            for r in fresh:
                self._run([r])

    def _fail(self, r: Request, error: str) -> None:
        r.finish = "error"
        self._send(r, {"error": error})

    @staticmethod
    def _send(r: Request, ev: dict) -> None:
        """``r.emit(ev)``; a listener that is gone (its event loop closed) cancels its row only."""
        try:
            r.emit(ev)
        except Exception:
            r.cancelled = True

    def run_batch(self, batch: list[Request]) -> None:
        torch, tok = self.torch, self.tokenizer
        from transformers import StoppingCriteria, StoppingCriteriaList

        self.batches.append(len(batch))
        width = max(len(r.prompt_ids) for r in batch)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch])
        dev = next(self.model.parameters()).device
        engine = self

        class Rows(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                last = input_ids[:, -1].tolist()
                return torch.tensor([engine._step(r, t) for r, t in zip(batch, last)], device=input_ids.device)

        first = batch[0]
        sample = first.sampling[0] == "sample"
        kw = {"do_sample": sample, "temperature": first.temperature, "top_p": first.top_p} if sample else \
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                max_new_tokens=max(r.max_tokens for r in batch), eos_token_id=[],
                                pad_token_id=pad, stopping_criteria=StoppingCriteriaList([Rows()]), **kw)
        for r in batch:  # generate ended on its own (max_new_tokens reached by the longest row)
            if r.finish is None:
                self._end(r, "length")

    def _step(self, r: Request, token: int) -> bool:
        """One new token of row ``r``; True when the row is done."""
        if r.finish is not None:
            return True
        if r.cancelled:
            r.finish = "cancelled"
            return True
        if token in self.stop_ids and not r.ignore_eos:
            self._end(r, "stop")
            return True
        r.tokens.append(token)
        r.text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
        for s in r.stop:
            at = r.text.find(s, max(0, r.sent - len(s)))
            if at >= 0:
                r.text = r.text[:max(at, r.sent)]
                self._end(r, "stop")
                return True
        if len(r.tokens) >= r.max_tokens:
            self._end(r, "length")
            return True
        # hold back an unfinished UTF-8 character and what could still become a stop string
        hold = max((len(s) - 1 for s in r.stop), default=0)
        upto = len(r.text) - hold
        while upto > r.sent and r.text[upto - 1] == "\ufffd":
            upto -= 1
        if upto > r.sent:
            self._send(r, {"text": r.text[r.sent:upto]})
            r.sent = upto
        return False

    def _end(self, r: Request, reason: str) -> None:
        r.text = r.text.rstrip("\ufffd")
        if len(r.text) > r.sent:
            self._send(r, {"text": r.text[r.sent:]})
            r.sent = len(r.text)
        r.finish = reason
        self._send(r, {"finish": reason, "completion_tokens": len(r.tokens), "prompt_tokens": len(r.prompt_ids)})
