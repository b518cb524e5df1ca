"""The vLLM backend of ``hpcft serve --api``: vLLM's own OpenAI server (vllm-ascend plugs into the
same entry point on Ascend NPUs), used when the job's environment has vLLM and the device is a
GPU or an NPU. hpcft only starts it with the run's model, the model id, the port and the key,
waits until it answers, writes ``serve.json`` and passes ``scancel``'s SIGTERM on.

A LoRA run is served as vLLM serves adapters: the base model under ``<id>-base`` and the adapter
under the run's model id (``--enable-lora --lora-modules``), no merge. The key goes to vLLM in
``VLLM_API_KEY`` (its documented variable), never on the command line where ``ps`` shows it.

Not exercised by the tests here (no vLLM, no GPU on the CI machine): :func:`vllm_argv` is
checked as a plain function; the rest is deliberately thin.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def vllm_usable(device: str) -> bool:
    if device not in ("gpu", "cuda", "npu") or importlib.util.find_spec("vllm") is None:
        return False
    return device != "npu" or importlib.util.find_spec("vllm_ascend") is not None


def vllm_argv(model: Path, base: str, name: str, host: str, port: int, python: str = sys.executable) -> list[str]:
    model = Path(model)
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port),
            "--disable-log-requests"]
    if (model / "adapter_config.json").is_file():
        cfg = json.loads((model / "adapter_config.json").read_text())
        base = base or cfg.get("base_model_name_or_path", "")
        argv += ["--model", base, "--served-model-name", f"{name}-base", "--enable-lora",
                 "--lora-modules", f"{name}={model}", "--max-lora-rank", str(max(8, int(cfg.get("r") or 8)))]
        if (model / "tokenizer_config.json").is_file():
            argv += ["--tokenizer", str(model)]  # the run's tokenizer and chat template
    else:
        argv += ["--model", str(model), "--served-model-name", name]
    return argv


def serve_with_vllm(a, port: int, key: str, info, details: dict) -> int:
    from .serving import answered, local_url

    argv = vllm_argv(Path(a.model), a.base, a.name, a.host, port)
    proc = subprocess.Popen(argv, env={**os.environ, "VLLM_API_KEY": key})

    def forward(signum, frame):
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        if not answered(local_url(a.host, port, "/v1/models"), 1800, {"Authorization": f"Bearer {key}"}):
            print(f"hpcft: error: vLLM did not answer on port {port}", file=sys.stderr, flush=True)
            proc.terminate()
            return proc.wait() or 1
        info.write(**details, backend="vllm")
        print(f"hpcft: serving the OpenAI-compatible API for {a.name} with vLLM on {info.info['node']} "
              f"{a.host}:{port} (pid {proc.pid})", flush=True)
        if a.print_secret:
            print(f"hpcft: API key (shown once; also in {info.path}, mode 0600): {key}", flush=True)
        return proc.wait()
    finally:
        info.remove()
