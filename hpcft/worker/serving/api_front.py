"""The one door in front of vLLM (issue 29): hpcft's own authenticating server, the only listener
anyone but the job can reach, forwarding the OpenAI routes to vLLM on loopback.

vLLM's ``--api-key`` covers ``/v1`` only: ``POST /invocations`` (a completion), ``/tokenize``,
``/metrics`` and ``/version`` answer without it (measured with vLLM 0.32), and a later release may
add more. So vLLM listens on 127.0.0.1 with a key of its own that never leaves the job, and this
front is what the portal, the ssh tunnel and every client reach:

- every path needs the run's key (401 without it), except ``GET /health``, which says only
  whether the engine answers (``{"status": "ok"}`` or 503), nothing about the model;
- with the key, only ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``
  and ``POST /v1/completions`` are forwarded; anything else is a 404 here, whatever vLLM serves;
- a body is read only after the key (:class:`~hpcft.worker.serving.shared.BodyGuard`: bounded, timed),
  parsed with NaN and Infinity refused (:func:`~hpcft.worker.serving.api_common.parse_json`), and sent
  on re-serialized, so vLLM only ever sees plain JSON;
- the fine-tuned model is what a client gets by default: a request without ``model``, or with
  the run id or another alias, goes to the run's model; ``/v1/models`` lists it first and the
  base (``NAME-base``, LoRA runs) after it, marked ``"hpcft_role": "base"``;
- when the model's generation config does not sample (``do_sample`` false or unset, as
  transformers reads it), a request without ``temperature`` is decoded greedily, as the
  transformers backend does; vLLM would otherwise sample at temperature 1.
"""

import json
import secrets
from dataclasses import dataclass, field
from typing import Optional

from hpcft.worker.serving.shared import BodyGuard

OPEN_PATHS = ("/health",)
FORWARDED_POSTS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Front:
    inner: str                    # vLLM's base URL on loopback, http://127.0.0.1:PORT
    inner_key: str                # vLLM's own key: never leaves the job
    key: str                      # the run's key, the one clients have
    name: str                     # the model id clients use (the run's)
    aliases: list[str] = field(default_factory=list)   # other names for it (the run id)
    base_name: Optional[str] = None                    # the base's id, for a LoRA run
    sample_default: bool = False                       # the model's generation config samples

    def model_for(self, asked) -> str:
        """The vLLM model id a request's ``model`` means (None or an alias: the run's model)."""
        from hpcft.worker.serving.api_engine import ApiError

        if asked is None or asked == self.name or asked in self.aliases:
            return self.name
        if not isinstance(asked, str):
            raise ApiError("model must be a string", param="model")
        if asked == self.base_name:
            return asked
        served = ", ".join(repr(n) for n in [self.name, *self.aliases, *([self.base_name] if self.base_name else [])])
        raise ApiError(f"The model '{asked[:200]}' does not exist; this server has {served}", 404,
                       param="model", code="model_not_found")

    def request_body(self, body) -> dict:
        from hpcft.worker.serving.api_engine import ApiError

        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        out = dict(body)
        out["model"] = self.model_for(body.get("model"))
        if out.get("temperature") is None and not self.sample_default:
            out["temperature"] = 0.0
        return out

    def listing(self, inner: dict) -> dict:
        """vLLM's ``/v1/models`` answer, the run's model first, the base marked as such."""
        data = [m for m in (inner.get("data") or []) if isinstance(m, dict)]
        mine = [m for m in data if m.get("id") == self.name]
        rest = [m for m in data if m.get("id") != self.name]
        for m in rest:
            if m.get("id") == self.base_name:
                m["hpcft_role"] = "base"
        for m in mine:
            m["hpcft_role"] = "fine-tuned"
        return {"object": "list", "data": mine + rest}


def build_front(front: Front, client=None):
    """The FastAPI app of the front; ``client`` an ``httpx.AsyncClient`` (made here by default)."""
    import httpx
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    from hpcft.worker.serving.api_common import error_response as _error
    from hpcft.worker.serving.api_common import parse_json
    from hpcft.worker.serving.api_engine import ApiError

    http = client or httpx.AsyncClient(base_url=front.inner, trust_env=False,
                                       timeout=httpx.Timeout(None, connect=10.0))
    inner_headers = {"Authorization": f"Bearer {front.inner_key}"}
    app = FastAPI(title="hpcft OpenAI-compatible server (vLLM)", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {front.key}".encode()
    app.add_middleware(BodyGuard)  # inside the key check: no body is read without the key

    @app.middleware("http")
    async def require_key(request: HttpRequest, call_next):
        if request.url.path in OPEN_PATHS and request.method == "GET":
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            return _error(401, "Incorrect API key provided (the key is in serve.json in the run folder)",
                          code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _error(exc.status, str(exc), param=exc.param, code=exc.code)

    async def engine_down(exc: Exception):
        return _error(503, f"the vLLM engine did not answer ({type(exc).__name__})", "server_error")

    @app.get("/health")
    async def health():
        try:
            r = await http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return JSONResponse({"status": "unavailable"}, 503)
        return JSONResponse({"status": "ok"} if r.status_code == 200 else {"status": "unavailable"},
                            200 if r.status_code == 200 else 503)

    async def inner_listing() -> dict:
        r = await http.get("/v1/models", headers=inner_headers)
        if r.status_code != 200:
            raise ApiError(f"the vLLM engine answered {r.status_code} for its model list", 502)
        return front.listing(r.json())

    @app.get("/v1/models")
    async def models():
        try:
            return JSONResponse(await inner_listing())
        except httpx.HTTPError as exc:
            return await engine_down(exc)

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        try:
            listing = await inner_listing()
        except httpx.HTTPError as exc:
            return await engine_down(exc)
        wanted = front.name if name in front.aliases else name
        for m in listing["data"]:
            if m.get("id") == wanted:
                return JSONResponse(m)
        raise ApiError(f"The model '{name[:200]}' does not exist", 404, param="model", code="model_not_found")

    async def forward(request: HttpRequest):
        body = front.request_body(parse_json(await request.body()))
        headers = {**inner_headers, "Content-Type": "application/json"}
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            if body.get("stream") is not True:
                r = await http.post(request.url.path, content=raw, headers=headers)
                return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
            upstream = await http.send(http.build_request("POST", request.url.path, content=raw, headers=headers),
                                       stream=True)
        except httpx.HTTPError as exc:
            return await engine_down(exc)

        async def relay():
            try:   # a client that goes away cancels this: closing the upstream aborts vLLM's request
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 media_type=upstream.headers.get("content-type", "text/event-stream"),
                                 headers={"Cache-Control": "no-cache"})

    for path in FORWARDED_POSTS:
        app.add_api_route(path, forward, methods=["POST"])

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def not_here(rest: str):
        raise ApiError(f"/{rest[:200]} is not served here (hpcft forwards /v1/models, /v1/chat/completions and "
                       f"/v1/completions to vLLM)", 404, code="not_found")

    app.state.http = http
    return app
