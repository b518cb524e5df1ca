"""Served tokens/s of ``hpcft serve --api`` (the transformers backend) for 8 concurrent streamed
requests, against a plain ``model.generate`` loop answering the same 8 prompts one by one.

    .venv/bin/python benchmarks/bench_serve.py            # hidden 256 x 4 layers, 128 tokens each
    .venv/bin/python benchmarks/bench_serve.py --quick    # hidden 64 x 2, 32 tokens each (~20 s)

Both sides: the same random Llama-architecture chat model (devtools/hub/llm_fixtures.py), the
same 8 chat prompts rendered with its own chat template, greedy, exactly ``--tokens`` new tokens
per answer (the server gets vLLM's ``ignore_eos``, the loop ``min_new_tokens``), the same CPU
threads. The server runs as ``python -m hpcft.worker.serving.api_server`` (what ``hpcft serve --api``
starts); the 8 requests are streamed by the real ``openai`` client from 8 threads at once, and
the wall time runs from the first request to the last ``[DONE]``. The loop runs in this process
while the server idles. Each side is warmed up, then the two are timed in turns, ``--repeat``
rounds each (default 3, 2 with ``--quick``); the best round of each counts, as a shared machine slows either side at
random. Tokens/s = generated tokens / wall time. Target (issue 19): served >= 2x loop.
Writes benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = 2.0
PROMPTS = [f"{q} (request {i})" for i, q in enumerate(
    ["What color is the apple?", "Spell river backwards.", "Repeat the word cloud three times.",
     "What color is the house?", "Spell garden backwards.", "Repeat the word table three times.",
     "What color is the window?", "Spell mountain backwards."])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _best(runs: list[tuple[int, float]]) -> dict:
    made, wall = min(runs, key=lambda r: r[1])
    return {"tokens": made, "wall_s": round(wall, 3), "tokens_per_s": round(made / wall, 1),
            "walls_s": [round(w, 3) for _, w in runs]}


class Loop:
    """The baseline: ``model.generate`` on one prompt after the other, in this process."""

    def __init__(self, model_dir: Path, tokens: int, threads: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch, self.tokens = torch, tokens
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        self.answer(PROMPTS[0])  # warm-up

    def answer(self, prompt: str) -> int:
        ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        with self.torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.tokens, min_new_tokens=self.tokens,
                                      do_sample=False, pad_token_id=self.tok.pad_token_id)
        return out.shape[1] - ids["input_ids"].shape[1]

    def round(self) -> tuple[int, float]:
        t0 = time.perf_counter()
        made = sum(self.answer(p) for p in PROMPTS)
        return made, time.perf_counter() - t0


class Served:
    """``python -m hpcft.worker.serving.api_server`` on the same model; 8 streamed requests at once."""

    def __init__(self, model_dir: Path, tokens: int, threads: int, work: Path):
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        self.tokens, self.port, self.work = tokens, port, work
        self.proc = subprocess.Popen([sys.executable, "-m", "hpcft.worker.serving.api_server", "--model", str(model_dir),
                                      "--name", "bench", "--run-dir", str(work), "--port", str(port)],
                                     env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> None:
        """Until the server answers (it starts while the loop side loads its model), then a warm-up."""
        import openai

        port, work = self.port, self.work
        deadline = time.monotonic() + 120
        info_path = work / "serve.json"
        while not info_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"bench_serve: the server did not start:\n{self.proc.stdout.read()[-2000:]}")
            time.sleep(0.2)
        info = json.loads(info_path.read_text())
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=info["api_key"], max_retries=0)
        self.pool = ThreadPoolExecutor(len(PROMPTS))
        list(self.pool.map(self.one, PROMPTS))  # warm-up: the first batch of 8

    def one(self, prompt: str) -> int:
        stream = self.client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": prompt}], max_tokens=self.tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        usage = [c.usage for c in stream if c.usage is not None]
        return usage[-1].completion_tokens

    def round(self) -> tuple[int, float]:
        t0 = time.perf_counter()
        made = sum(self.pool.map(self.one, PROMPTS))
        return made, time.perf_counter() - t0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _best(runs: list[tuple[int, float]]) -> dict:
    made, wall = min(runs, key=lambda r: r[1])
    return {"tokens": made, "wall_s": round(wall, 3), "tokens_per_s": round(made / wall, 1),
            "walls_s": [round(w, 3) for _, w in runs]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per answer (default 128; 32 with --quick)")
    p.add_argument("--repeat", type=int, default=None, help="timed rounds per side, the best counts (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on each side (default 1: stable on a busy machine)")
    a = p.parse_args()
    tokens = a.tokens or (32 if a.quick else 128)
    a.repeat = a.repeat or (2 if a.quick else 3)
    hidden, layers = (64, 2) if a.quick else (256, 4)
    from devtools.hub.llm_fixtures import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = make_tiny_llama(Path(tmp) / "model", decoys=False, hidden=hidden, layers=layers, shard="50MB")
        work = Path(tmp) / "run"
        work.mkdir()
        served_side = Served(model, tokens, a.threads, work)
        try:
            loop_side = Loop(model, tokens, a.threads)
            served_side.wait()
            rounds = {"loop": [], "served": []}
            for _ in range(a.repeat):  # interleaved: a load spike on the machine hits both sides
                rounds["loop"].append(loop_side.round())
                rounds["served"].append(served_side.round())
        finally:
            served_side.close()
    loop, served = _best(rounds["loop"]), _best(rounds["served"])
    ratio = served["tokens_per_s"] / loop["tokens_per_s"]
    print(f"model: random Llama, hidden {hidden} x {layers} layers; {len(PROMPTS)} chat prompts, {tokens} new "
          f"tokens each, greedy, {a.threads} CPU threads")
    print(f"{'side':<40}{'tokens':>8}{'wall s':>10}{'tokens/s':>11}")
    print(f"{'generate loop, one prompt at a time':<40}{loop['tokens']:>8}{loop['wall_s']:>10.2f}"
          f"{loop['tokens_per_s']:>11.1f}  (1.00x)")
    print(f"{'hpcft serve --api, 8 streamed at once':<40}{served['tokens']:>8}{served['wall_s']:>10.2f}"
          f"{served['tokens_per_s']:>11.1f}  ({ratio:.2f}x)")
    ok = ratio >= TARGET
    print(f"target: served >= {TARGET:.1f}x the loop: {'met' if ok else 'MISSED'} ({ratio:.2f}x)")
    out = ROOT / "benchmarks" / "results" / "bench_serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": a.quick, "tokens": tokens, "hidden": hidden, "layers": layers,
                               "threads": a.threads, "repeat": a.repeat, "loop": loop, "served": served, "ratio": round(ratio, 2),
                               "target": TARGET}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
