"""``hpcft serve RUN --api`` on a QLoRA run (issue 30): its adapter on the base quantized as it was
trained (bitsandbytes' CPU kernels here; the memory a small card trained in) or on the full base,
as chosen with ``--base-weights``; what cannot be served that way is refused in one line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.wait import wait_for
from tests.conftest import hpcft
from tests.test_qlora import need_bitsandbytes
from tests.test_serve_api import _listening, environ, train_tiny_chat

PROMPT = [{"role": "user", "content": "What color is the apple?"}]


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    need_bitsandbytes()
    return train_tiny_chat(tmp_path_factory.mktemp("qlora-serve"), "qlora-sft", method="qlora")


def _serve_here(run: dict, *extra: str) -> tuple[dict, str]:
    """``hpcft serve RUN --api`` here (the CLI execs the server), until it answers; (serve.json, its log)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    info_path = Path(run["run_dir"]) / "serve.json"
    info_path.unlink(missing_ok=True)
    log = open(Path(run["run_dir"]) / f"serve-here-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", "serve", run["run_id"], "--api", "--port",
                             str(port), *extra], env={**os.environ, **run["env"]}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: info_path.exists() or proc.poll() is not None, timeout=180, interval=0.3,
                 what="the API server to answer", describe=lambda _: "no serve.json yet")
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        info = json.loads(info_path.read_text())
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=info["api_key"], max_retries=0)
        reply = client.chat.completions.create(model="qlora-sft", messages=PROMPT, max_tokens=6)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
        return info, reply.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        wait_for(lambda: not _listening(port), timeout=30, interval=0.3, what=f"port {port} to be free",
                 describe=lambda _: "still listening")


@pytest.mark.slow
def test_a_qlora_adapter_is_served_on_its_quantized_base_or_the_full_one(qlora_run):
    info, _ = _serve_here(qlora_run)                                  # auto: as trained
    assert info["backend"] == "transformers" and info["quantized_base"] is True
    # --base-weights full starts the same server without --quantized-base: the base loads as in
    # any LoRA run (test_the_quantized_base_is_bitsandbytes_layers_under_the_adapter loads both)


@pytest.mark.slow
def test_the_quantized_base_is_bitsandbytes_layers_under_the_adapter(qlora_run):
    from hpcft.core.quantization import QuantizationSpec
    from hpcft.worker.serving.api_engine import load

    metrics = json.loads((Path(qlora_run["run_dir"]) / "metrics.json").read_text())
    with environ(qlora_run["env"]):
        model, tok = load(Path(metrics["output_dir"]), Path(metrics["base_model"]), "cpu",
                          quantization=QuantizationSpec().model_dump())
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds and model.peft_config   # 4-bit base, the adapter on top, no merge
    with environ(qlora_run["env"]):   # --base-weights full: the base in full precision under the same adapter
        full, _ = load(Path(metrics["output_dir"]), Path(metrics["base_model"]), "cpu")
    assert "Linear4bit" not in {type(m).__name__ for m in full.modules()} and full.peft_config
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_base_weights_that_cannot_be_served_are_refused_in_one_line(qlora_run):
    from devtools.runs import make_run

    env = qlora_run["env"]
    proc = hpcft("serve", qlora_run["run_id"], "--api", "--backend", "vllm", "--base-weights", "quantized", env=env)
    assert proc.returncode == 2 and "use --backend transformers" in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1
    with environ(env):   # a plain LoRA run (not trained: the refusal reads its job and adapter only)
        paths = make_run({"name": "plain-lora", "executor": "local",
                          "train": {"task": "causal-lm", "model": "tiny-chat", "max_steps": 1,
                                    "dataset": str(Path(qlora_run["home"]) / "qlora-sft.jsonl")}})
    out = paths.dir / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (paths.dir / "metrics.json").write_text(json.dumps({"task": "causal-lm", "adapter": True, "output_dir": str(out)}))
    proc = hpcft("serve", paths.run_id, "--api", "--base-weights", "quantized", env=env)
    assert proc.returncode == 2 and "is not a QLoRA run" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
