"""Issue 26, finding 6: the servers hpcft runs on a shared node hold against another user of it.

- ``hpcft tensorboard``: TensorBoard's app runs inside the authenticating process, whose gated
  port is the only socket it listens on (read from /proc, children included).
- Every server bounds bodies (413 beyond; a login form's only after it is known to be one) and
  drops a client that sends no request in time (header-less or trickling), while it goes on
  serving the others: the TensorBoard front (stdlib), the API and the demo (uvicorn).
- ``serve --api``: NaN, Infinity and every out-of-range sampling value get a 400 with a JSON
  error, and the next good request is served; one request that breaks ``generate`` fails alone.
- ``hpcft serve`` (the demo) asks for a password on loopback too, printed once with the URL.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from devtools.wait import wait_for

SHORT_S = 1.0   # the header deadline the in-process servers get here (the product's is serving.HEADER_S)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


RAW = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def _status(req: urllib.request.Request, opener=OPENER) -> tuple[int, bytes, dict]:
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out += _descendants(int(child))
    return out


def listening_ports(pid: int) -> dict[int, list[int]]:
    """{pid: [port, ...]} of the TCP sockets in LISTEN and the bound UDP sockets of ``pid`` and
    its descendants (/proc/PID/fd's socket inodes matched in /proc/PID/net/{tcp,tcp6,udp,udp6})."""
    found: dict[int, list[int]] = {}
    for p in _descendants(pid):
        inodes = set()
        for fd in Path(f"/proc/{p}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
        for table, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
            for line in Path(f"/proc/{p}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == state and fields[9] in inodes:
                    found.setdefault(p, []).append(int(fields[1].rsplit(":", 1)[1], 16))
    return found


def _still_open(socks: list[socket.socket]) -> list[socket.socket]:
    """Those of ``socks`` the server has not closed (a closed one reads as EOF or a reset)."""
    readable = set(select.select(socks, [], [], 0)[0])
    left = []
    for s in socks:
        if s in readable:
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    continue
            except ConnectionResetError:
                continue
        left.append(s)
    return left


def _raw_answer(port: int, data: bytes) -> bytes:
    """What the server answers to ``data`` sent as is (the body, if any, left unsent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


def _hold_slow_clients(port: int, serve_one) -> None:
    """50 connections that send nothing and one that trickles a header: the server answers
    ``serve_one()`` meanwhile, then closes every one of them on its own."""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    trickle = socket.create_connection(("127.0.0.1", port))
    trickle.sendall(b"GET / HTTP/1.1\r\n")
    try:
        serve_one()
        stop = threading.Event()

        def drip():  # a byte at a time, well inside any per-read timeout
            while not stop.wait(SHORT_S / 4):
                try:
                    trickle.sendall(b"X")
                except OSError:
                    return

        threading.Thread(target=drip, daemon=True).start()
        held = idle + [trickle]
        wait_for(lambda: _still_open(held), until=lambda left: not left,
                 timeout=15 * SHORT_S, interval=0.2, what="the server to drop 51 clients that sent no request in time",
                 describe=lambda left: f"{len(left)} connections still open")
        stop.set()
        serve_one()  # and it still serves
    finally:
        for s in idle + [trickle]:
            s.close()


# --------------------------------------------------------------------------- TensorBoard

def _event_dir(root: Path) -> Path:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    d = root / "events"
    w = EventFileWriter(str(d))
    for step in range(3):
        value = summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1))
        w.add_event(event_pb2.Event(wall_time=1.0 + step, step=step, summary=summary_pb2.Summary(value=[value])))
    w.close()
    return d


def _basic(password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()}


def test_tensorboard_listens_only_on_its_password_port(tmp_path):
    pytest.importorskip("tensorboard")
    info_path = tmp_path / "tensorboard.json"
    proc = subprocess.Popen([sys.executable, "-m", "hpcft.worker.serving.tensorboard", "--logdir-spec",
                             f"run-a:{_event_dir(tmp_path)}", "--info-file", str(info_path), "--print-secret"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for(lambda: json.loads(info_path.read_text()) if info_path.is_file() else None,
                        fail=lambda _: proc.poll() is not None, timeout=60, interval=0.2,
                        what=f"the TensorBoard server to write {info_path}")
        assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
        base = f"http://127.0.0.1:{info['port']}"
        assert listening_ports(proc.pid) == {proc.pid: [info["port"]]}  # no inner TensorBoard port, no child
        code, _, headers = _status(urllib.request.Request(f"{base}/data/runs"))
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        runs = f"{base}/data/runs"
        wait_for(lambda: _status(urllib.request.Request(runs, headers=_basic(info["password"])))[:2],
                 until=lambda got: got == (200, b'["run-a/."]'), timeout=30, interval=0.2,
                 what=f"{runs} to list the run (TensorBoard's reloader reads the event files)")
        code, page, _ = _status(urllib.request.Request(f"{base}/", headers=_basic(info["password"])))
        assert code == 200 and b"TensorBoard" in page
        # the SCOW connect button's form login: a cookie scoped to the server, then the board with it
        form = urllib.parse.urlencode({"password": info["password"]}).encode()
        code, _, headers = _status(urllib.request.Request(f"{base}/hpcft-login", data=form), RAW)
        assert code == 303 and headers["Location"] == "./"
        cookie = headers["Set-Cookie"].split(";")[0]
        scalars = f"{base}/data/plugin/scalars/scalars?run={urllib.parse.quote('run-a/.')}&tag=loss"
        code, data, _ = _status(urllib.request.Request(scalars, headers={"Cookie": cookie}))
        assert code == 200
        rows = json.loads(data)  # [wall time, step, value]: the event file's own values
        assert [r[1] for r in rows] == [0, 1, 2] and [r[2] for r in rows] == pytest.approx([1.0, 0.5, 1 / 3])
        assert listening_ports(proc.pid) == {proc.pid: [info["port"]]}  # still one, once the board has loaded
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out.count(info["password"]) == 1, out  # printed once, to its owner
    assert "Traceback" not in err, err
    assert not info_path.exists()  # removed on SIGTERM


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """The TensorBoard front in this process over a real board, with a short header deadline."""
    pytest.importorskip("tensorboard")
    from hpcft.worker.serving.tensorboard import Gate, board_app, serve_board

    app = board_app(f"run-a:{_event_dir(tmp_path_factory.mktemp('board'))}")
    front, serving = serve_board(app, Gate("s3cret-pass"), "127.0.0.1", 0)
    front.RequestHandlerClass.header_s = SHORT_S
    yield {"port": front.server_address[1], "password": "s3cret-pass"}
    front.shutdown()
    serving.join(10)


def test_front_reads_a_body_only_for_a_login_and_only_a_small_one(board):
    port = board["port"]
    # a login form of 200 MB declared (nothing sent): 413 at once, and the connection closes
    got = _raw_answer(port, b"POST /hpcft-login HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in got
    assert _raw_answer(port, b"POST /hpcft-login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       ).startswith(b"HTTP/1.1 411 ")
    # without the password, a body is never read: 401, and the connection closes (its body unread)
    got = _raw_answer(port, b"POST /data/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in got
    # the password in a small form still logs in; a wrong one is refused
    base = f"http://127.0.0.1:{port}"
    assert _status(urllib.request.Request(f"{base}/hpcft-login", data=b"password=wrong"), RAW)[0] == 401
    code, _, headers = _status(urllib.request.Request(f"{base}/hpcft-login", data=b"password=s3cret-pass"), RAW)
    assert code == 303 and headers["Set-Cookie"].startswith("hpcft-tb=")
    # with the password, a body over the cap is refused too
    auth = base64.b64encode(b"x:s3cret-pass")
    got = _raw_answer(port, b"POST /data/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth +
                      b"\r\nContent-Length: 99999999\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 413 ")
    # a kept-alive connection: a request's body is read, the next request is served after it
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Basic " + auth.decode(), "Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(2):
        conn.request("POST", "/data/plugin/timeseries/tags", body=b"experimentIds=%5B%5D", headers=headers)
        r = conn.getresponse()
        assert r.status == 200 and "scalars" in json.loads(r.read())
    conn.close()


def test_front_drops_clients_that_send_no_request_and_serves_the_others(board):
    def serve_one():
        req = urllib.request.Request(f"http://127.0.0.1:{board['port']}/data/runs", headers=_basic(board["password"]))
        code, body, _ = _status(req)
        assert code == 200 and "run-a" in body.decode()

    _hold_slow_clients(board["port"], serve_one)


# --------------------------------------------------------------------------- the API (transformers backend)

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API over the tiny chat model (untrained: the answers' text does not matter here), served
    by uvicorn as ``serve --api`` serves it, with a short header deadline."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.worker.serving.api_engine import Engine, load
    from hpcft.worker.serving.api_server import Api, build_app, serve_app

    model_dir = make_tiny_llama(tmp_path_factory.mktemp("api-model") / "tiny", decoys=False)
    model, tok = load(model_dir, None, "cpu")
    engine = Engine(model, tok, max_batch=4, max_wait_s=0.2)
    port = _free_port()
    server, serving = serve_app(build_app(Api(engine, "tiny", "sk-test", [], False)), "127.0.0.1", port,
                                header_s=SHORT_S)
    base = f"http://127.0.0.1:{port}/v1"
    wait_for(lambda: _status(urllib.request.Request(f"{base}/models", headers={"Authorization": "Bearer sk-test"}))[0],
             until=lambda code: code == 200, timeout=60, interval=0.2, retry_on=(OSError,),
             what=f"the API to answer on {base}/models")
    yield {"base": base, "port": port, "engine": engine, "tok": tok}
    server.should_exit = True
    serving.join(10)


def _post(api, path: str, body, key: str = "sk-test", raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(api["base"] + path, data=data, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    code, got, _ = _status(req)
    return code, json.loads(got)


GOOD = {"prompt": "red green", "max_tokens": 3}
BAD = [  # (the body as sent, the param the error names)
    (b'{"prompt": "red green", "max_tokens": 3, "temperature": NaN}', None),
    (b'{"prompt": "red green", "max_tokens": 3, "top_p": Infinity}', None),
    (b'{"prompt": "red green", "max_tokens": 3, "temperature": -Infinity}', None),
    (b'{"prompt": "red green", "max_tokens": 3, "temperature": 1e999}', None),
    (b'{"prompt": "red green", "max_tokens": 3, "metadata": {"x": [NaN]}}', None),   # anywhere in the body
    (b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}", None),                 # an int of 5000 digits
    (b"[" * 100000 + b"]" * 100000, None),
    (b'[{"prompt": "x"}]', None),
    (b'{"prompt": "x", "temperature": 2.5}', "temperature"),
    (b'{"prompt": "x", "temperature": -0.1}', "temperature"),
    (b'{"prompt": "x", "temperature": true}', "temperature"),
    (b'{"prompt": "x", "temperature": "0.7"}', "temperature"),
    (b'{"prompt": "x", "top_p": 1.5}', "top_p"),
    (b'{"prompt": "x", "top_p": false}', "top_p"),
    (b'{"prompt": "x", "max_tokens": 0}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": -5}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 2.5}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": true}', "max_tokens"),
    (b'{"prompt": "x", "max_completion_tokens": 0}', "max_completion_tokens"),
    (b'{"prompt": "x", "max_tokens": 99999999999999999999}', "max_tokens"),   # beyond the context
    (b'{"prompt": "x", "n": 2}', "n"),
    (b'{"prompt": "x", "n": true}', "n"),
    (b'{"prompt": "x", "presence_penalty": 3}', "presence_penalty"),
    (b'{"prompt": "x", "frequency_penalty": 0.5}', "frequency_penalty"),
    (b'{"prompt": "x", "seed": true}', "seed"),
    (b'{"prompt": "x", "seed": 1.5}', "seed"),
    (b'{"prompt": "x", "seed": 99999999999999999999}', "seed"),
    (b'{"prompt": "x", "logprobs": 3}', "logprobs"),
    (b'{"prompt": "x", "best_of": 2}', "best_of"),
    (b'{"prompt": "x", "stream": "yes"}', "stream"),
    (b'{"prompt": "x", "stream_options": {"include_usage": 1}}', "stream_options"),
    (b'{"prompt": "x", "ignore_eos": 1}', "ignore_eos"),
    (b'{"prompt": "x", "stop": ["a", 3]}', "stop"),
    (b'{"prompt": "x", "model": 7}', "model"),
]


@pytest.mark.parametrize("raw, param", BAD, ids=[f"{i}-{p or 'json'}" for i, (_, p) in enumerate(BAD)])
def test_api_refuses_a_bad_value_with_a_400_and_serves_the_next_request(api, raw, param):
    code, got = _post(api, "/completions", None, raw=raw)
    assert code == 400, got
    assert set(got) == {"error"} and got["error"]["type"] == "invalid_request_error" and got["error"]["message"]
    assert got["error"]["param"] == param, got
    code, got = _post(api, "/completions", GOOD)
    assert code == 200 and got["choices"][0]["finish_reason"] in ("stop", "length"), got


def test_api_refuses_a_nan_chat_request_then_answers_chat_and_stream(api):
    msgs = [{"role": "user", "content": "hi"}]
    raw = json.dumps({"messages": msgs, "max_tokens": 3}).encode()[:-1] + b', "temperature": NaN}'
    code, got = _post(api, "/chat/completions", None, raw=raw)
    assert code == 400 and "NaN" in got["error"]["message"]
    code, got = _post(api, "/chat/completions", {"messages": msgs, "max_tokens": 3, "logprobs": True})
    assert code == 400 and got["error"]["param"] == "logprobs"
    code, got = _post(api, "/chat/completions", {"messages": msgs, "max_tokens": 3, "temperature": 0.7, "seed": 1,
                                                 "presence_penalty": 0, "n": 1, "logprobs": False})
    assert code == 200 and got["choices"][0]["message"]["role"] == "assistant"
    req = urllib.request.Request(api["base"] + "/chat/completions", headers={"Authorization": "Bearer sk-test"},
                                 data=json.dumps({"messages": msgs, "max_tokens": 3, "stream": True}).encode())
    with OPENER.open(req, timeout=60) as r:
        assert r.read().decode().rstrip().endswith("data: [DONE]")


def test_api_bounds_bodies_after_the_key(api):
    def answer(key: str, length: int) -> bytes:  # the body declared, never sent
        return _raw_answer(api["port"], b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                           key.encode() + b"\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n")

    assert answer("sk-test", 5 * 1024 * 1024).startswith(b"HTTP/1.1 413 ")
    assert answer("sk-wrong", 5 * 1024 * 1024).startswith(b"HTTP/1.1 401 ")  # the key first: no body read
    code, got = _post(api, "/completions", {**GOOD, "prompt": "red " * 1000})  # a large body within the cap
    assert code == 200, got


def test_body_guard_caps_a_body_sent_without_a_length():
    """A chunked body (no Content-Length) is read only up to the cap, then 413; the app never runs."""
    import asyncio

    from hpcft.worker.serving.shared import BodyGuard

    async def app(scope, receive, send):
        raise AssertionError("the app was called with an oversized body")

    async def drive(path: str, chunks: int) -> tuple[int, dict]:
        sent = []
        pending = [{"type": "http.request", "body": b"x" * 1024, "more_body": True} for _ in range(chunks)]

        async def receive():
            return pending.pop(0) if pending else {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"transfer-encoding", b"chunked")]}
        await BodyGuard(app, limit=64 * 1024, login_limit=4 * 1024)(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"]), len(pending)

    status, body, left = asyncio.run(drive("/v1/completions", 1000))
    assert status == 413 and "over 65536 bytes" in body["error"]["message"] and left > 900  # stopped reading
    status, body, _ = asyncio.run(drive("/login", 10))
    assert status == 413 and "over 4096 bytes" in body["error"]["message"]


def test_api_drops_clients_that_send_no_request_and_serves_the_others(api):
    def serve_one():
        req = urllib.request.Request(api["base"] + "/models", headers={"Authorization": "Bearer sk-test"})
        assert _status(req)[0] == 200

    _hold_slow_clients(api["port"], serve_one)


@pytest.mark.worker
def test_engine_fails_only_the_request_that_breaks_generate(tmp_path):
    """A row that makes ``generate`` raise (a token id beyond the vocabulary), batched with good
    ones: it gets the error, the others their answers; a listener that raises cancels its row
    only; and the engine serves the next request. A NaN temperature never reaches ``generate``."""
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.worker.serving.api_engine import ApiError, Engine, Request, load

    model, tok = load(make_tiny_llama(tmp_path / "tiny", decoys=False), None, "cpu")
    engine = Engine(model, tok, max_batch=8, max_wait_s=0.5)
    prompt = engine.encode("red green")
    ends: dict[str, dict] = {}
    done = threading.Event()

    def listener(name: str):
        def emit(ev):
            if "error" in ev or "finish" in ev:
                ends[name] = ev
                if len(ends) == 3:
                    done.set()
        return emit

    def broken(ev):
        raise RuntimeError("the client's event loop is closed")

    reqs = {"good-1": Request(prompt, 3, emit=listener("good-1")),
            "bad": Request([len(tok) + 1000], 3, emit=listener("bad")),
            "good-2": Request(prompt, 4, emit=listener("good-2")),
            "gone": Request(prompt, 4, emit=broken)}
    for r in reqs.values():
        engine.submit(r)
    assert done.wait(120), ends
    assert "error" in ends["bad"] and ends["good-1"]["finish"] in ("stop", "length") \
        and ends["good-2"]["finish"] in ("stop", "length"), ends
    wait_for(lambda: reqs["gone"].finish, timeout=60, what="the row whose listener raises to end")
    assert reqs["gone"].finish == "cancelled" and reqs["gone"].cancelled
    assert engine.batches[:2] == [4, 1]  # the four together first; then each row again, alone
    with pytest.raises(ApiError, match="temperature"):
        engine.submit(Request(prompt, 3, temperature=float("nan")))
    after = threading.Event()
    engine.submit(Request(prompt, 2, emit=lambda ev: after.set() if "finish" in ev else None))
    assert after.wait(60)


# --------------------------------------------------------------------------- the demo

def test_demo_asks_for_a_password_on_loopback_printed_once_with_the_url(tmp_path):
    pytest.importorskip("gradio")
    from devtools.hub.llm_fixtures import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "tiny", decoys=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpcft.worker.serving.demo", "--model", str(model_dir), "--run-dir",
                             str(run_dir), "--port", str(port), "--print-secret"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    info_path = run_dir / "serve.json"
    try:
        info = wait_for(lambda: json.loads(info_path.read_text()) if info_path.is_file() else None,
                        fail=lambda _: proc.poll() is not None, timeout=120, interval=0.3,
                        what=f"the demo to write {info_path}")
        assert info["host"] == "127.0.0.1" and info["user"] == "hpcft" and len(info["password"]) >= 20
        assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
        base = f"http://127.0.0.1:{port}"
        assert _status(urllib.request.Request(f"{base}/config"))[0] == 401  # on loopback too
        form = urllib.parse.urlencode({"username": "hpcft", "password": "wrong"}).encode()
        assert _status(urllib.request.Request(f"{base}/login", data=form))[0] in (400, 401)
        assert _status(urllib.request.Request(f"{base}/hpcft-login", data=b"password=wrong"), RAW)[0] == 401
        code, _, headers = _status(urllib.request.Request(
            f"{base}/hpcft-login", data=urllib.parse.urlencode({"password": info["password"]}).encode()), RAW)
        assert code == 303
        cookie = "; ".join(c.split(";")[0] for c in headers.get_all("set-cookie"))
        assert _status(urllib.request.Request(f"{base}/config", headers={"Cookie": cookie}))[0] == 200
        # gradio's own login reads its form only up to the login cap
        got = _raw_answer(port, b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 500000000\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 413 ")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out.count(info["password"]) == 1, out
    line = next(line for line in out.splitlines() if info["password"] in line)
    assert f"http://127.0.0.1:{port}/" in line and "hpcft" in line and "0600" in line
    assert not info_path.exists()
