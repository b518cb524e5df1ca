"""Servers reached through the SCOW portal (issue 20): with ``scow: {portal_url, cluster}`` in the
cluster config, ``hpcft serve --submit`` (the Gradio demo) and ``hpcft tensorboard --submit`` bind
where the portal's proxy reaches them, ask for a secret made per server (printed once, kept in a
0600 file), and print the portal's proxy URL in its exact form
(OpenSCOW ``apps/portal-web/src/server/setup/proxy.ts``, ``parseProxyTarget``).

One tiny chat model is fully fine-tuned here once per module (a few steps, TensorBoard on), and
both servers run side by side on the dev Slurm.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools.wait import wait_for
from hpcft.core.config import Scow
from tests.test_serve_api import train_tiny_chat

PORTAL = "https://hpc.example.edu/scow"      # a portal with a base path
CLUSTER = "hpc01"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None


RAW = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def parse_proxy_target(url: str, base_path: str) -> str:
    """OpenSCOW's parseProxyTarget (proxy.ts) for a request URL that includes the base path, the
    compute node reached directly: ``[_empty, _api, _proxy, clusterId, type, node, port, ...path]``."""
    relative = url if base_path == "/" else url[len(base_path):]
    _empty, api, proxy, cluster, kind, node, port, *path = relative.split("/")
    assert (_empty, api, proxy, cluster) == ("", "api", "proxy", CLUSTER)
    assert kind == "relative"  # the app sees only /<path>
    return f"http://{node}:{port}/{'/'.join(path)}"


def _status(req: urllib.request.Request, opener=OPENER):
    """(status, body, headers) without raising on 4xx/5xx."""
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@pytest.fixture(scope="module")
def portal_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("portal-home")
    run = train_tiny_chat(home, "demo-full", method="full", report_to=["tensorboard"])
    Path(run["env"]["HPCFT_CONFIG"]).write_text(yaml.safe_dump({"scow": {"portal_url": PORTAL, "cluster": CLUSTER}}))
    return run


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out + err
    return out


def _check_printed(out: str, info_path: Path, secret_key: str) -> dict:
    info = json.loads(info_path.read_text())
    assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
    assert info["host"] == "0.0.0.0"  # where the portal's proxy reaches it
    secret = info[secret_key]
    assert out.count(secret) == 1     # printed once, to its owner
    url = f"{PORTAL}/api/proxy/{CLUSTER}/relative/{info['node']}/{info['port']}/"
    assert f"through the SCOW portal (logged in): {url}\n" in out and "ssh -N -L" not in out
    target = parse_proxy_target(urllib.parse.urlsplit(url).path, urllib.parse.urlsplit(PORTAL).path)
    assert target == f"http://{info['node']}:{info['port']}/"
    assert info["proxy_path"] == urllib.parse.urlsplit(url).path
    return info


@pytest.mark.slurm
@pytest.mark.slow
def test_demo_and_tensorboard_through_the_portal_need_their_secret(slurm, portal_run):
    env = {**portal_run["env"], "SLURM_CONF": slurm}
    run_dir = Path(portal_run["run_dir"])
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    procs = {"serve": _start(["serve", portal_run["run_id"], "--submit", "--time", "00:10:00"], env),
             "tensorboard": _start(["tensorboard", portal_run["run_id"], "--submit", "--time", "00:10:00"], env)}
    outs, jobs = {}, []
    try:
        for name, proc in procs.items():
            outs[name] = _finish(proc)
            jobs.append(re.search(rf"submitted {name} job (\d+)", outs[name]).group(1))

        # ---- the Gradio demo: gradio's own auth=, plus the form login SCOW's connect button posts
        demo = _check_printed(outs["serve"], run_dir / "serve.json", "password")
        base = f"http://{demo['node']}:{demo['port']}"
        assert _status(urllib.request.Request(f"{base}/config"))[0] == 401
        form = urllib.parse.urlencode({"username": "hpcft", "password": "wrong"}).encode()
        assert _status(urllib.request.Request(f"{base}/login", data=form))[0] in (400, 401)
        assert _status(urllib.request.Request(f"{base}/hpcft-login", data=b"password=wrong"), RAW)[0] == 401
        code, _, headers = _status(urllib.request.Request(
            f"{base}/hpcft-login", data=urllib.parse.urlencode({"password": demo["password"]}).encode()), RAW)
        assert code == 303 and headers["location"] == "./"
        cookies = headers.get_all("set-cookie")
        cookie = "; ".join(c.split(";")[0] for c in cookies)
        assert all(f"Path={demo['proxy_path']}" in c for c in cookies)  # scoped to this app's portal path
        code, body, _ = _status(urllib.request.Request(f"{base}/config", headers={"Cookie": cookie}))
        assert code == 200
        config = json.loads(body)
        assert demo["proxy_path"].rstrip("/") in config["root"]  # links are written under the portal's path
        code, page, _ = _status(urllib.request.Request(f"{base}/", headers={"Cookie": cookie}))
        assert code == 200 and b"auth_required" not in page

        # ---- TensorBoard: nothing without the password, the board with it
        tb_info_path = Path(re.search(r"^  (\S+tensorboard\.json) \(mode 0600", outs["tensorboard"], re.M).group(1))
        tb = _check_printed(outs["tensorboard"], tb_info_path, "password")
        base = f"http://{tb['node']}:{tb['port']}"
        code, _, headers = _status(urllib.request.Request(f"{base}/"))
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        bad = base64.b64encode(b"hpcft:wrong").decode()
        assert _status(urllib.request.Request(f"{base}/", headers={"Authorization": f"Basic {bad}"}))[0] == 401
        good = {"Authorization": "Basic " + base64.b64encode(f"anyone:{tb['password']}".encode()).decode()}
        code, page, _ = _status(urllib.request.Request(f"{base}/", headers=good))
        assert code == 200 and b"TensorBoard" in page

        def board_runs() -> list:
            code, body, _ = _status(urllib.request.Request(f"{base}/data/runs", headers=good))
            return json.loads(body) if code == 200 else []

        runs = wait_for(board_runs, until=lambda runs: portal_run["run_id"] in json.dumps(runs), timeout=90,
                        interval=1, what=f"TensorBoard's /data/runs to list run {portal_run['run_id']}",
                        describe=lambda runs: f"runs {runs}")
        assert any(portal_run["run_id"] in r for r in runs), runs  # the run's own event files
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        if jobs:
            subprocess.run(["scancel", *jobs], env={**os.environ, **env}, check=True)


def test_print_served_api_through_the_portal(capsys, tmp_path):
    """The API server's lines with a portal configured: the proxy URL of /v1 and the key, once."""
    from hpcft.use.reach import Served, print_served

    scow = Scow(portal_url=PORTAL + "/", cluster=CLUSTER)
    info = {"kind": "api", "api_key": "sk-hpcft-abc", "node": "cn07", "host": "0.0.0.0", "port": 41234}
    print_served(Served("cn07", "0.0.0.0", 41234, 99, "", False, info), scow, tmp_path / "serve.json", "77")
    out = capsys.readouterr().out
    assert f"through the SCOW portal (logged in): {PORTAL}/api/proxy/{CLUSTER}/relative/cn07/41234/v1\n" in out
    assert out.count("sk-hpcft-abc") == 1 and "stop it with: scancel 77" in out
    assert "on the cluster:     http://cn07:41234/v1\n" in out  # scripts on the cluster skip the portal
    # without a portal: the ssh line, as before
    print_served(Served("cn07", "127.0.0.1", 41234, 99, "", False, info), Scow(), tmp_path / "serve.json", "77")
    out = capsys.readouterr().out
    assert "ssh -N -L 8000:127.0.0.1:41234 -J" in out and "/api/proxy/" not in out


@pytest.mark.parametrize("url,ok", [("https://hpc.example.edu/scow", True), ("http://10.0.0.5:8080", True),
                                    ("hpc.example.edu", False), ("https://x/y?z=1", False)])
def test_portal_url_is_checked(url, ok):
    from pydantic import ValidationError

    if ok:
        assert Scow(portal_url=url, cluster="hpc01").portal_url == url
    else:
        with pytest.raises(ValidationError):
            Scow(portal_url=url, cluster="hpc01")


def test_port_of_the_proxy_url_helpers():
    from hpcft.use.reach import proxy_prefix, proxy_url

    scow = Scow(portal_url="https://hpc.example.edu", cluster="c1")
    assert proxy_prefix(scow) == "/api/proxy/c1/relative"
    assert proxy_url(scow, "cn1", 5000) == "https://hpc.example.edu/api/proxy/c1/relative/cn1/5000/"
    assert parse_proxy_target(urllib.parse.urlsplit(proxy_url(scow, "cn1", 5000, "x/y")).path.replace(
        "/c1/", f"/{CLUSTER}/"), "/") == "http://cn1:5000/x/y"


def test_tensorboard_scow_app_logs_in_with_the_connect_button(portal_run, tmp_path):
    """contrib/scow/apps/hpcft-tensorboard.yml run as the portal runs it (before.sh, script.sh under
    server_entry.sh; here without Slurm): the connect button's POST logs the browser in."""
    import signal

    from tests.test_scow_apps import ROOT as REPO
    from tests.test_scow_apps import _portal_scripts

    app = yaml.safe_load((REPO / "contrib" / "scow" / "apps" / "hpcft-tensorboard.yml").read_text())
    work = tmp_path / "session"
    work.mkdir()
    entry = _portal_scripts(app, work, {"RUNS": portal_run["run_id"], "HPCFT_ENV": ""})
    (tmp_path / ".bash_profile").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    env = {**os.environ, **portal_run["env"], "HOME": str(tmp_path),
           "SERVER_SESSION_INFO": str(work / "session.json")}
    proc = subprocess.Popen(["bash", str(entry)], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120   # for both waits together
        wait_for(lambda: (work / "session.json").exists(), timeout=120, interval=0.2,
                 what=f"the TensorBoard app to write {work / 'session.json'}",
                 describe=lambda _: "no session.json yet")
        session = json.loads((work / "session.json").read_text())
        base = f"http://127.0.0.1:{session['PORT']}"
        wait_for(lambda: _status(urllib.request.Request(f"{base}/"))[0] if _port_open(session["PORT"]) else None,
                 until=lambda code: code == 401, fail=lambda _: proc.poll() is not None,
                 timeout=max(deadline - time.monotonic(), 0), interval=0.5,
                 what=f"the TensorBoard app to answer 401 (password needed) at {base}/",
                 describe=lambda code: proc.stdout.read() if proc.poll() is not None else f"status {code}")
        # the connect button: POST <proxy path>/hpcft-login with formData password={{ PASSWORD }}
        form = urllib.parse.urlencode({"password": session["PASSWORD"]}).encode()
        code, _, headers = _status(urllib.request.Request(f"{base}/hpcft-login", data=form), RAW)
        assert code == 303 and headers["Location"] == "./"
        cookie = headers["Set-Cookie"]
        assert f"Path=/scow/api/proxy/hpc01/relative/{session['HOST']}/{session['PORT']}/" in cookie
        code, page, _ = _status(urllib.request.Request(f"{base}/", headers={"Cookie": cookie.split(";")[0]}))
        assert code == 200 and b"TensorBoard" in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _port_open(port) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", int(port))) == 0


def test_tensorboard_without_event_files_is_refused_in_one_line(run_hpcft, hpcft_home):
    from devtools.runs import make_run, tiny_job

    proc = run_hpcft("tensorboard")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"hpcft tensorboard: no run under {hpcft_home / 'runs'} has TensorBoard event files "
                                   "(train.report_to: [tensorboard] writes them)")
    paths = make_run(tiny_job("no-events"))
    proc = run_hpcft("tensorboard", paths.run_id, "--submit")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"hpcft tensorboard: run {paths.run_id} has no TensorBoard event files in "
                                  f"{paths.dir / 'tensorboard'}")
    assert not (hpcft_home / "tensorboard").exists() or not any((hpcft_home / "tensorboard").iterdir())
