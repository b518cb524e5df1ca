"""What a run records (issue 10): hardware, throughput, peak memory, wall-time breakdown,
device-hours in metrics.json; offline trackers (TensorBoard, SwanLab) writing only into the
run folder with no route to the internet. Real training of the tiny BERT, no Slurm."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from devtools.hub.pytest_fixtures import hub_fixtures  # noqa: F401
from devtools.runs import make_run, run_worker, stage_standard, start_paused_worker, tiny_job
from hpcft.worker import telemetry as tele

DEAD = "http://127.0.0.1:9"
NO_ROUTE = {"HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD, "https_proxy": DEAD, "http_proxy": DEAD,
            "ALL_PROXY": DEAD, "NO_PROXY": ""}


def test_combine_sums_legs_and_takes_the_peak_over_ranks():
    legs = [{"setup_s": 5, "train_s": 10, "eval_s": 1, "save_s": 0.5, "total_s": 17, "samples": 320, "tokens": 6400},
            {"setup_s": 4, "train_s": 6, "eval_s": 1, "save_s": 1, "total_s": 12, "samples": 192, "tokens": 3840}]
    ranks = [{"rank": 1, "device_allocated_mb": 900.0, "device_reserved_mb": 1024.0, "host_rss_mb": 700.0},
             {"rank": 0, "device_allocated_mb": 1000.0, "device_reserved_mb": 1100.0, "host_rss_mb": 650.0}]
    dev = SimpleNamespace(kind="cuda", name="NVIDIA A100", precision="bf16")
    t = tele.combine(legs, ranks, device=dev, world_size=2, nodes=1)
    assert t["throughput"]["samples_per_s"] == pytest.approx(512 / 16)
    assert t["throughput"]["tokens_per_s"] == pytest.approx(10240 / 16)
    assert t["memory"] == {"peak_device_allocated_mb": 1000.0, "peak_device_reserved_mb": 1100.0,
                           "peak_host_rss_mb": 700.0}
    assert [r["rank"] for r in t["ranks"]] == [0, 1]
    assert t["wall"]["train_s"] == 16 and t["wall"]["setup_s"] == 9 and t["wall"]["legs"] == 2
    assert t["device_hours"] == pytest.approx(29 * 2 / 3600, rel=1e-3)
    assert t["hardware"] == {"device": "cuda", "device_name": "NVIDIA A100", "device_count": 2, "nodes": 1,
                             "world_size": 2, "precision": "bf16"}


@pytest.mark.slow
def test_run_records_telemetry_and_offline_trackers(hub_fixtures, hpcft_home):  # noqa: F811
    stage_standard(hpcft_home / "cache", hub_fixtures)
    paths = make_run(tiny_job("tracked", epochs=2, learning_rate=3e-3, report_to=["tensorboard", "swanlab"]))
    proc = run_worker(paths, env=NO_ROUTE, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads(paths.metrics.read_text())

    hw, thr, mem, wall = m["hardware"], m["throughput"], m["memory"], m["wall"]
    assert hw == {"device": "cpu", "device_name": m["device_name"], "device_count": 1, "nodes": 1,
                  "world_size": 1, "precision": "fp32"}
    assert thr["samples"] == 64 * 16 and thr["samples_per_s"] > 0
    # real tokens: fewer than the padded batches would hold, more than one per sample
    assert thr["samples"] < thr["tokens"] < thr["samples"] * 128 and thr["tokens_per_s"] > thr["samples_per_s"]
    assert mem["peak_host_rss_mb"] > 100 and mem["peak_device_allocated_mb"] is None  # CPU: no device memory
    assert m["ranks"][0]["rank"] == 0 and m["ranks"][0]["host_rss_mb"] == mem["peak_host_rss_mb"]
    assert 0 < wall["setup_s"] < wall["total_s"] and wall["train_s"] > 0 and wall["eval_s"] > 0
    assert wall["save_s"] > 0 and wall["legs"] == 1
    assert wall["setup_s"] + wall["train_s"] + wall["eval_s"] + wall["save_s"] <= wall["total_s"] + 0.5
    assert m["device_hours"] == pytest.approx(wall["total_s"] / 3600, rel=1e-3)
    assert m["label_names"] == ["not_equivalent", "equivalent"]

    # TensorBoard: event files under the run folder, read back with the logged loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(paths.tensorboard.rglob("events.out.tfevents.*"))
    assert events, list(paths.dir.iterdir())
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    progress = [json.loads(x) for x in paths.progress.read_text().splitlines()]
    ours = {e["step"]: e["loss"] for e in progress if e["event"] == "train"}
    assert logged and set(logged) == set(ours)
    assert all(logged[s] == pytest.approx(ours[s], rel=1e-5) for s in ours)

    # SwanLab: offline, its log in the run folder, finished without a network
    runs = list(paths.swanlog.glob("run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.swanlab")), list(paths.swanlog.rglob("*"))
    assert "swanlab: offline mode" in proc.stdout

    # hpcft show: the telemetry, and how to look at both trackers from the login node
    from tests.conftest import hpcft

    show = hpcft("show", paths.run_id, check=True).stdout
    assert f"swanlab sync {runs[0]}" in show and f"swanlab watch {paths.swanlog}" in show
    assert f"tensorboard --logdir {paths.tensorboard}" in show and f"tensorboard --logdir {paths.dir.parent}" in show
    assert "hardware:  1x cpu" in show and "device-hours" in show


def test_queue_wait_from_scontrol_output():
    text = ("JobId=44 JobName=x UserId=root(0) JobState=RUNNING Reason=None RunTime=00:00:03 "
            "SubmitTime=2026-11-29T15:09:00 EligibleTime=2026-11-29T15:09:00 "
            "AccrueTime=2026-11-29T15:09:00 StartTime=2026-11-29T15:10:31 EndTime=2026-11-29T15:20:31")
    assert tele.parse_queue_wait(text) == 91.0
    assert tele.parse_queue_wait("JobId=44 StartTime=Unknown SubmitTime=2026-11-29T15:09:00") is None
    assert tele.parse_queue_wait("") is None


@pytest.mark.slow
def test_requeued_run_sums_its_legs(hub_fixtures, hpcft_home):  # noqa: F811
    """USR2 mid-run -> the leg hands over (a `leg` event); the rerun finishes; metrics.json covers
    both legs: every step's samples and real tokens once, the same totals as an uninterrupted run."""
    import signal

    from hpcft.worker.timelimit import EXIT_REQUEUE

    stage_standard(hpcft_home / "cache", hub_fixtures)
    job = tiny_job(learning_rate=3e-3, epochs=2)
    ref = make_run(job)
    assert run_worker(ref).returncode == 0
    paths = make_run(job)
    proc = start_paused_worker(paths, step=40)   # paused until the signal: no race with the last steps
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    legs = [json.loads(x) for x in paths.progress.read_text().splitlines() if '"leg"' in x]
    assert len(legs) == 1 and 40 * 16 <= legs[0]["samples"] < 64 * 16 and legs[0]["tokens"] > 0
    assert run_worker(paths).returncode == 0
    a, b = json.loads(ref.metrics.read_text()), json.loads(paths.metrics.read_text())
    assert b["wall"]["legs"] == 2 and a["wall"]["legs"] == 1
    assert b["throughput"]["samples"] == a["throughput"]["samples"] == 64 * 16
    assert b["throughput"]["tokens"] == a["throughput"]["tokens"]
    assert b["wall"]["total_s"] > legs[0]["total_s"] and b["wall"]["setup_s"] > legs[0]["setup_s"]
