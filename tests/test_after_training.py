"""After training, on the real dev cluster (devtools/cluster/dev-slurm up): one job file
submitted to two partitions and compared; the trained classifier used offline (predict) and
behind a Gradio demo (serve) that a real headless Chromium drives; serve --submit on a compute
node; a missing tracker refused before submit.

The two runs are trained once per module (sst2 stand-in: sentiment words decide the label).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools.hub.pytest_fixtures import hub_fixtures  # noqa: F401
from devtools.runs import ROOT, stage_standard, tiny_job
from devtools.wait import wait_for
from hpcft.core.progress_log import read_progress
from tests.conftest import IN_CI, hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DEAD = "http://127.0.0.1:9"
NO_ROUTE = {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD, "https_proxy": DEAD,
            "http_proxy": DEAD, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
POSITIVE = "this film is wonderful and brilliant ."
NEGATIVE = "the plot was boring and dreadful ."
ARTIFACTS = ROOT / "test-artifacts"


def _home_env(home: Path) -> dict:
    return {"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
            "HPCFT_CONFIG": str(home / "no-cluster-config.yaml"), "XDG_CONFIG_HOME": str(home / "xdg"), **NO_ROUTE}


@pytest.fixture(scope="module")
def trained(slurm_conf, hub_fixtures, tmp_path_factory):  # noqa: F811
    """The same job submitted to partitions gpu and npu (CPU training: no devices requested)."""
    home = tmp_path_factory.mktemp("after-home")
    stage_standard(home / "cache", hub_fixtures)
    env = {**_home_env(home), "SLURM_CONF": slurm_conf}
    job = tiny_job("sst2-cmp", dataset="glue/sst2", epochs=3, learning_rate=3e-3, save_best=True)
    job.update(executor="slurm", resources={"time": "00:10:00"},
               env={"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD}})
    path = home / "sst2-cmp.yaml"
    path.write_text(yaml.safe_dump(job))
    subs = []
    for part in ("npu", "gpu"):
        proc = hpcft("submit", str(path), "--set", f"resources.partition={part}", "--json", env=env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        subs.append(json.loads(proc.stdout))
    for sub in subs:
        proc = hpcft("logs", "-f", sub["job_id"], env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return {"env": env, "home": home, "runs": subs}


def _metrics(run: dict) -> dict:
    return json.loads((Path(run["run_dir"]) / "metrics.json").read_text())


# --------------------------------------------------------------------------- compare

def test_compare_two_partitions_table_json_and_png(trained, tmp_path):
    env, (a, b) = trained["env"], trained["runs"]
    png = tmp_path / "compare.png"
    proc = hpcft("compare", a["run_id"], b["run_dir"], "--png", str(png), env=env, check=True)
    lines = proc.stdout.splitlines()
    header, rows = lines[0], lines[1:3]
    assert header.split()[:3] == ["run", "partition", "device"]
    cols = [re.split(r"\s{2,}", r.strip()) for r in rows]
    assert [c[1] for c in cols] == ["npu", "gpu"]
    for c in cols:
        assert len(c) == 12 and "-" not in c, c  # every column filled
    ma, mb = _metrics(a), _metrics(b)
    ratio = mb["throughput"]["samples_per_s"] / ma["throughput"]["samples_per_s"]
    assert cols[0][5].endswith("(1.00x)") and cols[1][5].endswith(f"({ratio:.2f}x)")
    tratio = mb["throughput"]["tokens_per_s"] / ma["throughput"]["tokens_per_s"]
    assert cols[1][6].endswith(f"({tratio:.2f}x)")
    assert cols[0][11] == f"accuracy {ma['eval']['accuracy']:.4f}"

    js = json.loads(hpcft("compare", a["run_id"], b["run_id"], "--json", env=env, check=True).stdout)["runs"]
    for row, m, c in zip(js, (ma, mb), cols):
        assert row["samples_per_s"] == m["throughput"]["samples_per_s"]
        assert row["tokens_per_s"] == m["throughput"]["tokens_per_s"]
        assert row["peak_memory_mb"] == m["memory"]["peak_host_rss_mb"]
        assert row["train_s"] == m["wall"]["train_s"] and row["queue_wait_s"] == m["wall"]["queue_wait_s"]
        assert c[5].startswith(f"{row['samples_per_s']:.1f} ") and c[6].startswith(f"{row['tokens_per_s']:.1f} ")
        assert c[7] == f"{row['peak_memory_mb']:.0f} MiB (host)" and c[10] == f"{row['final_loss']:.4g}"
        assert row["headline_value"] == m["eval"]["accuracy"]
    assert js[1]["samples_ratio"] == pytest.approx(ratio, abs=1e-3)

    # the PNG: a real image, and the numbers behind it are the runs' own
    from PIL import Image

    img = Image.open(png)
    assert img.format == "PNG" and img.size == (1500, 800)
    series = json.loads(img.text["hpcft-compare"])
    for s, run in zip(series, (a, b)):
        events = read_progress(Path(run["run_dir"]) / "progress.jsonl")
        train = [e for e in events if e["event"] == "train"]
        assert s["step"] == [e["step"] for e in train] and s["loss"] == [e["loss"] for e in train]
        assert s["wall_s"] == sorted(s["wall_s"]) and s["wall_s"][-1] > 0
        assert s["eval_step"] == [e["step"] for e in events if e["event"] == "eval"] and s["eval_name"] == "accuracy"

    # the figure's axes and series, drawn from the same rows
    from hpcft.runs.compare import compare, figure
    from hpcft.runs.index import RunStore
    from hpcft.runs.ref import resolve_run

    store = RunStore(trained["home"] / "runs")
    rows_ = compare([resolve_run(store, a["run_id"]), resolve_run(store, b["run_id"])])
    fig = figure(rows_)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["training loss", "training loss against wall time", "eval metric",
                                                "throughput: samples/s", "throughput: tokens/s (real tokens)",
                                                "peak host memory"]
    assert [ax.get_xlabel() for ax in axes[:3]] == ["step", "wall time (s)", "step"]
    for ax in axes[:3]:
        assert len(ax.lines) == 2
    assert list(axes[0].lines[1].get_ydata()) == series[1]["loss"]
    assert list(axes[1].lines[0].get_xdata()) == series[0]["wall_s"]
    assert [p.get_height() for p in axes[3].patches] == [r["samples_per_s"] for r in js]
    assert [p.get_height() for p in axes[5].patches] == [r["peak_memory_mb"] for r in js]


def test_compare_by_name_and_last(trained):
    env, (a, b) = trained["env"], trained["runs"]
    js = json.loads(hpcft("compare", "--last", "2", "--json", env=env, check=True).stdout)["runs"]
    assert {r["run_id"] for r in js} == {a["run_id"], b["run_id"]}
    by_name = json.loads(hpcft("compare", "sst2-cmp", "--json", env=env, check=True).stdout)["runs"]
    assert by_name[0]["run_id"] == b["run_id"]  # the latest run with that name
    bad = hpcft("compare", "no-such-run", env=env)
    assert bad.returncode == 1 and "no run or job 'no-such-run'" in bad.stderr


# --------------------------------------------------------------------------- predict

def test_predict_returns_the_trained_labels_offline(trained, tmp_path):
    env, (a, _) = trained["env"], trained["runs"]
    assert _metrics(a)["eval"]["accuracy"] >= 0.8
    t0 = time.monotonic()
    proc = hpcft("predict", a["run_id"], POSITIVE, NEGATIVE, env={**env, "OMP_NUM_THREADS": "1"}, check=True)
    cold = time.monotonic() - t0
    labels = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [(x[0], x[2]) for x in labels] == [("positive", POSITIVE), ("negative", NEGATIVE)]
    assert all(float(x[1]) > 0.5 for x in labels)
    print(f"\npredict cold, one CLI call with 2 sentences: {cold:.2f} s")

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"sentence": NEGATIVE}) + "\n" + json.dumps({"text": POSITIVE}) + "\n")
    out = tmp_path / "out.jsonl"
    hpcft("predict", a["run_id"], "--best", "--file", str(inp), "--out", str(out), env=env, check=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["negative", "positive"]
    assert set(rows[0]["scores"]) == {"negative", "positive"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "x"}\n')
    proc = hpcft("predict", a["run_id"], "--file", str(bad), env=env)
    assert proc.returncode == 2 and "bad.jsonl:1: no text field" in proc.stderr


def test_predict_submit_writes_into_the_run_folder(trained):
    env, (_, b) = trained["env"], trained["runs"]
    proc = hpcft("predict", b["run_id"], POSITIVE, "--submit", "--wait", env=env, timeout=300, check=True)
    assert "submitted predict job" in proc.stdout
    outs = list((Path(b["run_dir"]) / "predictions").glob("predictions-*.jsonl"))
    assert len(outs) == 1
    assert json.loads(outs[0].read_text())["label"] == "positive"
    script = next((Path(b["run_dir"]) / "predictions").glob("predict-*.sh")).read_text()
    assert "#SBATCH --partition=gpu" in script and "export HF_HUB_OFFLINE=1" in script


# --------------------------------------------------------------------------- serve

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def _browser(tmp_path: Path):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        driver_bin = None
    if not (chromium and driver_bin):
        msg = "chromium, chromedriver and selenium are needed (bash scripts/setup installs them)"
        pytest.fail(msg) if IN_CI else pytest.skip(msg)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def test_serve_page_in_a_real_browser(trained, tmp_path):
    env, (a, _) = trained["env"], trained["runs"]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", "serve", a["run_id"], "--port", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        out = []

        def read_line() -> str:  # blocks until serve prints its next line; the wait judges all of them
            out.append(proc.stdout.readline())
            return "".join(out)

        text = wait_for(read_line, until=lambda text: "hpcft: serving" in text,
                        fail=lambda _: proc.poll() is not None, timeout=120, interval=0,
                        what=f"hpcft serve to print 'hpcft: serving' (port {port})")
        assert f"ssh -N -L {port}:127.0.0.1:{port}" in text and "SCOW" in text
        info = json.loads((Path(a["run_dir"]) / "serve.json").read_text())
        assert info["port"] == port and info["host"] == "127.0.0.1"

        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver = _browser(tmp_path)
        driver.get(f"http://127.0.0.1:{port}/")
        # the demo asks for a password on the loopback too (other users of the node share it)
        pw = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type='password']"))
        user = [e for e in driver.find_elements(By.CSS_SELECTOR, "input, textarea") if e.get_attribute("type") != "password"]
        user[0].send_keys(info["user"])
        pw.send_keys(info["password"])
        driver.find_element(By.XPATH, "//button[normalize-space()='Login']").click()
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea"))
        box.send_keys(POSITIVE)
        driver.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()

        def label(d):
            found = d.find_elements(By.CSS_SELECTOR, "[data-testid='label-output-value']")
            return found[0].text.strip() if found and found[0].text.strip() else None

        got = WebDriverWait(driver, 60).until(label)
        # the page loaded nothing from outside the app (no fonts, analytics or CDN)
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(f"http://127.0.0.1:{port}/") for u in urls), \
            [u for u in urls if not u.startswith(f"http://127.0.0.1:{port}/")]
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACTS / "serve-demo.png")
        assert got == "positive"
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    assert not (Path(a["run_dir"]) / "serve.json").exists()  # removed on stop


def test_serve_submit_runs_on_a_node_and_scancel_frees_the_port(trained):
    env, (_, b) = trained["env"], trained["runs"]
    proc = hpcft("serve", b["run_id"], "--submit", "--time", "00:10:00", env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"submitted serve job (\d+)", proc.stdout).group(1)
    try:
        info = json.loads((Path(b["run_dir"]) / "serve.json").read_text())
        assert info["job_id"] == job_id and f"serving on node {info['node']} port {info['port']}" in proc.stdout
        assert "the app answers here" in proc.stdout
        assert _answers(f"http://127.0.0.1:{info['port']}/")
    finally:
        subprocess.run(["scancel", job_id], env={**os.environ, **env}, check=True)
    url = f"http://127.0.0.1:{info['port']}/"
    wait_for(lambda: not _answers(url), timeout=60, interval=0.5,
             what=f"the serve app of cancelled job {job_id} to stop answering at {url}",
             describe=lambda _: f"{url} still answers 200")
    with socket.socket() as s:  # the port is free again: a new server (SO_REUSEADDR, as servers bind) can take it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", info["port"]))
        s.listen()


# --------------------------------------------------------------------------- trackers

def test_missing_tracker_is_refused_before_submit(slurm, run_hpcft, tmp_path):
    venv = tmp_path / "bare-venv"
    (venv / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    job = tiny_job("tracked", report_to=["tensorboard", "swanlab"])
    job.update(executor="slurm", env={"venv": str(venv)})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = run_hpcft("submit", str(path))
    assert proc.returncode == 2
    assert (f"trackers: train.report_to needs tensorboard, swanlab but venv {venv} has none of them; "
            f"install: {venv}/bin/python -m pip install tensorboard swanlab") in proc.stderr
    assert not list((Path(os.environ["HPCFT_HOME"]) / "runs").glob("*-tracked-*"))  # nothing half-written
    job["env"] = {}
    path.write_text(yaml.safe_dump(job))
    check = run_hpcft("check", str(path))
    assert "✓ trackers: tensorboard, swanlab in this Python" in check.stdout
