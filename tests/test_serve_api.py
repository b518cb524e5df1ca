"""``hpcft serve RUN --api`` (issue 19): an OpenAI-compatible server for a LoRA run, with the real
``openai`` client, on the dev Slurm cluster; bad input (a classifier run, a port in use) refused
in one line with exit 2; the batching engine in process.

The LoRA run is trained once per module, locally (``python -m hpcft.worker RUN``, as the local
executor does), from a tiny random chat model (devtools/hub/llm_fixtures.py) staged offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devtools.wait import wait_for
from tests.conftest import hpcft

DEAD = "http://127.0.0.1:9"
MODEL_ALIAS = "tiny-chat"


def home_env(home: Path) -> dict:
    return {"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
            "HPCFT_CONFIG": str(home / "cluster-config.yaml"), "XDG_CONFIG_HOME": str(home / "xdg"),
            "HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD, "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def environ(env: dict):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_tiny_chat(home: Path, name: str, *, hidden: int = 64, data_n: int = 32, **train) -> dict:
    """A causal-lm run of the tiny chat model (staged offline under ``tiny-chat``), trained a few
    steps here as the local executor runs it (``python -m hpcft.worker RUN``); {run_id, run_dir, env}.
    ``hidden`` 128 gives heads of 32 (vLLM's CPU attention has no kernel for 16)."""
    from devtools.hub.llm_fixtures import make_tiny_llama, write_alpaca
    from devtools.runs import make_run, run_worker
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    env = home_env(home)
    with environ(env):
        model = home / "src-model"
        if not (model / "config.json").is_file():
            make_tiny_llama(model, decoys=False, hidden=hidden)
            register_local(Cache(home / "cache"), "model", "hpcft-test/tiny-chat", model, aliases=[MODEL_ALIAS])
        data = write_alpaca(home / f"{name}.jsonl", n=data_n)
        job = {"name": name, "executor": "local",
               "train": {"task": "causal-lm", "model": MODEL_ALIAS, "dataset": str(data), "max_steps": 3,
                         "batch_size": 8, "max_seq_length": 48, "learning_rate": 2e-2, "logging_steps": 1,
                         "sample_prompts": 0, **train}}
        paths = make_run(job)
    proc = run_worker(paths, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return {"run_id": paths.run_id, "run_dir": str(paths.dir), "env": env, "home": home}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return train_tiny_chat(tmp_path_factory.mktemp("api-home"), "api-sft")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- on the dev cluster

@pytest.mark.slurm
@pytest.mark.slow
def test_api_submit_answers_the_openai_client_and_scancel_frees_the_port(slurm, lora_run):
    import openai

    env, run_dir = {**lora_run["env"], "SLURM_CONF": slurm}, Path(lora_run["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["adapter"] is True  # a LoRA run: served with its adapter, not merged
    proc = hpcft("serve", lora_run["run_id"], "--api", "--submit", "--time", "00:10:00", env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"submitted serve-api job (\d+)", proc.stdout).group(1)
    try:
        info_path = run_dir / "serve.json"
        info = json.loads(info_path.read_text())
        assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
        key = info["api_key"]
        assert proc.stdout.count(key) == 1 and f"API key, shown this once: {key}" in proc.stdout
        assert info["job_id"] == job_id and info["host"] == "127.0.0.1" and info["backend"] == "transformers"
        assert f"ssh -N -L 8000:127.0.0.1:{info['port']}" in proc.stdout and "the app answers here" in proc.stdout
        log = (run_dir / "serve" / f"serve-api.{job_id}.out").read_text()
        assert key not in log  # the key is in serve.json only, not in the job's log or script
        assert not any(key in p.read_text(errors="replace") for p in (run_dir / "serve").iterdir() if p.is_file())

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{info['port']}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["api-sft"]
        msgs = [{"role": "user", "content": "What color is the apple?"}]
        chat = client.chat.completions.create(model="api-sft", messages=msgs, max_tokens=8)
        choice = chat.choices[0]
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length") and 1 <= chat.usage.completion_tokens <= 8
        # the prompt was the model's own chat template (ChatML) up to the assistant's turn
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(metrics["output_dir"])
        rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert chat.usage.prompt_tokens == len(tok(rendered)["input_ids"])
        assert rendered.endswith("<|im_start|>assistant\n")

        stream = client.chat.completions.create(model=lora_run["run_id"], messages=msgs, max_tokens=8, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
        assert chunks[-1].usage.completion_tokens >= 1 and isinstance(text, str)
        done = client.completions.create(model="api-sft", prompt="red green", max_tokens=4)
        assert done.choices[0].finish_reason in ("stop", "length") and done.usage.prompt_tokens >= 1

        # the docs' snippet, as written, against this server
        run = subprocess.run([sys.executable, "-c", openai_snippet()], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HPCFT_API_URL": f"http://127.0.0.1:{info['port']}/v1",
                                  "HPCFT_API_KEY": key})
        assert run.returncode == 0, run.stderr[-2000:]
        assert len(run.stdout.splitlines()) == 2  # the reply, then the streamed answer

        with pytest.raises(openai.AuthenticationError) as exc:
            openai.OpenAI(base_url=f"http://127.0.0.1:{info['port']}/v1", api_key="sk-wrong",
                          max_retries=0).models.list()
        assert exc.value.status_code == 401
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=2)
    finally:
        subprocess.run(["scancel", job_id], env={**os.environ, **env}, check=True)
    wait_for(lambda: not _listening(info["port"]), timeout=60, interval=0.5,  # the port is free again
             what=f"port {info['port']} to be free after scancel {job_id}",
             describe=lambda _: f"something still listens on 127.0.0.1:{info['port']}")
    wait_for(lambda: not info_path.exists(), timeout=30, interval=0.5,  # removed by the server on SIGTERM
             what=f"the API server to remove {info_path} on SIGTERM", describe=lambda _: f"{info_path} still exists")


# --------------------------------------------------------------------------- bad input

def test_api_on_a_classifier_run_is_refused_in_one_line(lora_run, tmp_path):
    from devtools.runs import make_run, tiny_job

    env = lora_run["env"]
    with environ(env):
        paths = make_run(tiny_job("a-classifier"))
    paths.output.mkdir(parents=True, exist_ok=True)
    (paths.output / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (paths.metrics).write_text(json.dumps({"output_dir": str(paths.output), "eval": {"accuracy": 0.9}}))
    proc = hpcft("serve", paths.run_id, "--api", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"hpcft serve --api: run {paths.run_id} is a classifier; the OpenAI-compatible "
                                   f"API serves LLM runs (train.task: causal-lm). Its demo: hpcft serve {paths.run_id}")


def test_api_on_a_port_in_use_is_refused_in_one_line(lora_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = hpcft("serve", lora_run["run_id"], "--api", "--port", str(port), env=lora_run["env"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"hpcft serve: port {port} on 127.0.0.1 is in use; pick another with --port"


# --------------------------------------------------------------------------- the engine, in process

@pytest.mark.worker
def test_engine_batches_concurrent_requests_and_stops_per_row(lora_run):
    from hpcft.worker.serving.api_engine import Engine, Request, load, render_chat

    m = json.loads((Path(lora_run["run_dir"]) / "metrics.json").read_text())
    model, tok = load(Path(m["output_dir"]), Path(m["base_model"]), "cpu")
    assert type(model).__name__.startswith("PeftModel")  # the adapter on its base, not merged
    engine = Engine(model, tok, max_batch=8, max_wait_s=0.3)
    assert tok.convert_tokens_to_ids("<|im_end|>") in engine.stop_ids
    prompt = engine.encode(render_chat(tok, [{"role": "user", "content": "Spell apple backwards."}]))
    done = threading.Event()
    results: dict[int, dict] = {}

    def collector(i):
        def emit(ev):
            results.setdefault(i, {"text": "", "end": None})
            if "text" in ev:
                results[i]["text"] += ev["text"]
            if "finish" in ev:
                results[i]["end"] = ev
                if all(r["end"] for r in results.values()) and len(results) == 8:
                    done.set()
        return emit

    reqs = [Request(prompt, max_tokens=3 + i, emit=collector(i)) for i in range(8)]
    for r in reqs:
        engine.submit(r)
    assert done.wait(120)
    assert engine.batches == [8]  # all eight in one generate call
    for i, r in enumerate(reqs):
        end = results[i]["end"]
        assert end["completion_tokens"] <= 3 + i and end["finish"] in ("stop", "length")
        assert results[i]["text"] == r.text  # streamed pieces add up to the answer
    # greedy: the same prompt gives the same text whatever the row's length limit
    longest = max(reqs, key=lambda r: len(r.tokens))
    for r in reqs:
        assert longest.tokens[:len(r.tokens)] == r.tokens
    # a stop string ends the row there and is not part of the answer
    word = reqs[-1].text.strip()[:2]
    if word:
        ev = threading.Event()
        r = Request(prompt, max_tokens=10, stop=[word], emit=lambda e: ev.set() if "finish" in e else None)
        engine.submit(r)
        assert ev.wait(60) and r.finish == "stop" and word not in r.text


def openai_snippet() -> str:
    """The ```python block under the openai-snippet marker of docs/after-training.md."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "after-training.md").read_text()
    after = doc.split("<!-- openai-snippet", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_docs_openai_snippet_is_python_using_the_real_client():
    import ast

    code = openai_snippet()
    tree = ast.parse(code)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "openai" for n in tree.body)
    assert "stream=True" in code and "HPCFT_API_KEY" in code


def test_vllm_is_not_chosen_where_the_env_has_no_vllm():
    """This lane (.venv) has no vLLM: auto picks transformers on every device. The vLLM backend
    itself runs for real in tests/test_serve_vllm.py, from the vLLM lane (.venv-vllm)."""
    import importlib.util

    from hpcft.worker.serving.api_vllm import vllm_usable

    assert importlib.util.find_spec("vllm") is None
    assert not any(vllm_usable(d) for d in ("cpu", "gpu", "npu"))
