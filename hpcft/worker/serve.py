"""A Gradio demo of a trained run's model: text in, labels with scores out (a classifier), or a
chat box (a generative model). Started by ``hpcft serve`` (login node, or a compute node with
``--submit``); the login side never imports this module, and only this module imports gradio::

    python -m hpcft.worker.serve --model DIR --run-dir RUN [--host 127.0.0.1] [--port N] [--device cpu]

No outbound network: analytics off, no share link, no version check, system fonts instead of
Google Fonts, server-side rendering off (no Node). Once the app answers its own HTTP request it
writes ``serve.json`` (job id, node, host, port, pid, url) into the run folder and prints
``hpcft: serving ...``; on SIGTERM (``scancel``) it closes the server and removes the file.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from ..core.atomic import atomic_write_json, read_json
from .predict import Example, Predictor, parse_text

QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
             "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", 0))
        return s.getsockname()[1]


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


def answered(url: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.serve")
    p.add_argument("--model", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--device", default="cpu")
    p.add_argument("--columns", default="")
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    os.environ.update(QUIET_ENV)
    import gradio as gr

    pred = Predictor(Path(a.model), a.device)
    cols = [c for c in a.columns.split(",") if c]
    port = a.port or free_port(a.host)
    title = a.title or f"hpcft: {Path(a.run_dir).name}"
    demo = build(pred, title, cols if len(cols) == 2 else None)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    demo.launch(server_name=a.host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, theme=theme, footer_links=[], enable_monitoring=False, mcp_server=False)
    local = "127.0.0.1" if a.host in ("0.0.0.0", "", "::") else a.host
    url = f"http://{local}:{port}/"
    if not answered(url):
        print(f"hpcft: error: the app did not answer on {url}", file=sys.stderr, flush=True)
        demo.close()
        return 1
    info_path = Path(a.run_dir) / "serve.json"
    info = {"job_id": os.environ.get("SLURM_JOB_ID"), "node": socket.gethostname(), "host": a.host, "port": port,
            "pid": os.getpid(), "url": url, "model": a.model, "kind": pred.kind, "started": time.time()}
    atomic_write_json(info_path, info)
    print(f"hpcft: serving {pred.kind} model {a.model} on {info['node']} {a.host}:{port} (pid {os.getpid()})",
          flush=True)

    def stop(signum, frame):
        current = read_json(info_path) or {}
        if current.get("pid") == os.getpid() and current.get("node") == info["node"]:
            info_path.unlink(missing_ok=True)
        print(f"hpcft: serve stopped (signal {signum})", flush=True)
        demo.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(run())
