"""A Gradio demo of a trained run's model: text in, labels with scores out (a classifier), or a
chat box (a generative model). Started by ``hpcft serve`` (login node, or a compute node with
``--submit``); the login side never imports this module, and only this module imports gradio::

    python -m hpcft.worker.serving.demo --model DIR --run-dir RUN [--host 127.0.0.1] [--port N] [--device cpu]

No outbound network: analytics off, no share link, no version check, system fonts instead of
Google Fonts, server-side rendering off (no Node). Once the app answers its own HTTP request it
writes ``serve.json`` (job id, node, host, port, pid, url, and the password) into the run folder
and prints ``hpcft: serving ...``; on SIGTERM (``scancel``) it closes the server and removes the file.

The demo always asks for a password (user ``hpcft``; gradio's ``auth=``), on the node's loopback
too: every user of a login node shares it (issue 26). The password is made per server (or taken
from ``--password-env``, SCOW's ``PASSWORD``), written only to the 0600 ``serve.json``, and printed
once, with the URL, on an interactive start. Bodies are bounded (:class:`serving.BodyGuard`) and
a connection that sends no request in time is closed (:func:`serving.guarded_h11`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

from hpcft.worker.after_training.predict import Example, Predictor, parse_text
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

QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
             "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]


def build(pred: Predictor, title: str, pair_columns: Optional[list[str]] = None):
    import gradio as gr

    if pred.kind == "generate":
        def reply(message, history):
            return pred.chat(message)

        return gr.ChatInterface(reply, title=title, analytics_enabled=False)

    def classify(text: str, second: Optional[str] = None) -> dict:
        ex = Example(text, second) if second else parse_text(text)
        row = pred.predict([ex])[0]
        return row.get("scores") or {"value": row.get("value")}

    inputs = [gr.Textbox(label=name, lines=2) for name in pair_columns] if pair_columns else \
        [gr.Textbox(label="text", lines=3, placeholder="type a sentence and press Submit")]
    return gr.Interface(classify, inputs=inputs, outputs=gr.Label(label="label", num_top_classes=5),
                        title=title, flagging_mode="never", analytics_enabled=False)


def add_form_login(demo, password: str, cookie_path: str = "/") -> bool:
    """``POST /hpcft-login`` (form field ``password``): what SCOW's "connect" button sends
    (contrib/scow/apps/hpcft-demo.yml); logs the browser in as gradio's own ``/login`` does and
    redirects to the app (``./``, under whatever proxy path the browser used). False when this
    gradio keeps its sessions otherwise (then only gradio's login page works). The body reaches
    it through :class:`BodyGuard`, so it is at most ``LOGIN_BODY_MAX`` bytes."""
    import secrets as _secrets
    import urllib.parse

    from starlette.responses import PlainTextResponse, RedirectResponse

    app = getattr(demo, "server_app", None)
    if app is None or not isinstance(getattr(app, "tokens", None), dict) or not hasattr(app, "cookie_id"):
        return False
    expected = password.encode()

    async def hpcft_login(request):  # a plain Starlette route: the raw form, no FastAPI parameters
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        if not _secrets.compare_digest(form.get("password", [""])[0].encode(), expected):
            return PlainTextResponse("wrong password\n", status_code=401)
        token = _secrets.token_urlsafe(16)
        app.tokens[token] = USER
        resp = RedirectResponse("./", status_code=303)
        resp.set_cookie(f"access-token-{app.cookie_id}", token, httponly=True, samesite="none", secure=True,
                        path=cookie_path)  # the portal path of this app only, not every app behind it
        resp.set_cookie(f"access-token-unsecure-{app.cookie_id}", token, httponly=True, path=cookie_path)
        return resp

    app.add_route("/hpcft-login", hpcft_login, methods=["POST"])
    return True


def guard_uvicorn() -> None:
    """The uvicorn that gradio starts (with no say in its protocol) uses the guarded h11 protocol
    of :func:`serving.guarded_h11`: this process serves only the demo."""
    from uvicorn import config

    config.HTTP_PROTOCOLS["auto"] = "hpcft.worker.serving.shared:GuardedH11Protocol"


USER = "hpcft"


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.serving.demo")
    p.add_argument("--model", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--device", default="cpu")
    p.add_argument("--columns", default="")
    p.add_argument("--title", default="")
    p.add_argument("--auth", action="store_true", help="(always on now: the demo asks for a password; "
                                                        "kept so that job scripts written before still start)")
    p.add_argument("--password-env", default="", help="take the password from this variable (SCOW's PASSWORD)")
    p.add_argument("--proxy-node", default="", help="the node's name in the portal's URL (SCOW's $HOST)")
    p.add_argument("--proxy-prefix", default="", help="the portal's proxy path up to the node (SCOW)")
    p.add_argument("--info-file", default="", help="default: serve.json in the run folder")
    p.add_argument("--print-secret", action="store_true", help="print the password here (an interactive start)")
    a = p.parse_args(argv)
    os.environ.update(QUIET_ENV)
    import gradio as gr

    pred = Predictor(Path(a.model), a.device)
    cols = [c for c in a.columns.split(",") if c]
    port = a.port or free_port(a.host)
    title = a.title or f"hpcft: {Path(a.run_dir).name}"
    password = (os.environ.get(a.password_env, "") if a.password_env else "") or make_secret(length=24)
    root = proxy_path(a.proxy_prefix, port, a.proxy_node)
    demo = build(pred, title, cols if len(cols) == 2 else None)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    from starlette.middleware import Middleware

    guard_uvicorn()
    demo.launch(server_name=a.host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, theme=theme, footer_links=[], enable_monitoring=False, mcp_server=False,
                auth=(USER, password), root_path=root or None, app_kwargs={"middleware": [Middleware(BodyGuard)]})
    add_form_login(demo, password, root + "/" if root else "/")
    url = local_url(a.host, port)
    if not answered(url):
        print(f"hpcft: error: the app did not answer on {url}", file=sys.stderr, flush=True)
        demo.close()
        return 1
    info = InfoFile(Path(a.info_file) if a.info_file else Path(a.run_dir) / "serve.json")
    details = {"kind": "demo", "host": a.host, "port": port, "url": url, "model": a.model, "task": pred.kind,
               "proxy_path": root + "/" if root else ""}
    info.write(**details, user=USER, password=password)
    on_stop(info, demo.close, "serve")
    print(f"hpcft: serving {pred.kind} model {a.model} on {info.info['node']} {a.host}:{port} (pid {os.getpid()})",
          flush=True)
    if a.print_secret:
        print(f"hpcft: open {url} and log in as {USER} with the password (shown once; also in {info.path}, "
              f"mode 0600): {password}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(run())
