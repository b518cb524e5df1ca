"""What both OpenAI-compatible servers share (the transformers backend, :mod:`hpcft.worker.serving.api_server`,
and the front before vLLM, :mod:`hpcft.worker.serving.api_front`): OpenAI's error body, the request JSON
with NaN and Infinity refused, uvicorn in a thread with the guarded protocol, and whether the run
may run its model's own code."""

import json
import math
import threading
from pathlib import Path

from hpcft.worker.serving.api_engine import ApiError
from hpcft.worker.serving.shared import HEADER_S, guarded_h11


def error_response(status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _refuse_constant(name: str):
    raise ApiError(f"the request body holds {name}: JSON numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(f"the request body holds the number {text[:40]}, beyond a float's range")
    return value


def parse_json(raw: bytes):
    """The request's JSON, with NaN, Infinity and numbers beyond a float's range refused (400)."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of thousands of digits
        raise ApiError(f"the request body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError("the request body is not JSON: nested too deeply") from None


def serve_app(app, host: str, port: int, header_s: float = HEADER_S):
    """(server, thread): uvicorn serving ``app`` from a thread, with the guarded h11 protocol (a
    connection that sends no request within ``header_s`` is closed)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", http=guarded_h11(header_s),
                                           timeout_graceful_shutdown=3, access_log=False))
    # uvicorn in a thread: it leaves the signals to us (in the main thread it re-raises SIGTERM after
    # its shutdown, and the process would die before removing serve.json)
    serving = threading.Thread(target=server.run, name="hpcft-uvicorn", daemon=True)
    serving.start()
    return server, serving


def trusts_remote_code(run_dir: Path) -> bool:
    """The run's own job said ``train.trust_remote_code: true`` (never implied): a GLM-4-style
    model trained with it is served with it; anything else loads without running repo code."""
    import yaml

    try:
        job = yaml.safe_load((run_dir / "job.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return False
    train = job.get("train") if isinstance(job, dict) else None
    return isinstance(train, dict) and train.get("trust_remote_code") is True
