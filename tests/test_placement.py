"""Placement on the dev Slurm (``resources.partition: auto``, ``gpus_per_node: auto``): two GPU
partitions, ``v100`` and ``v100b`` (devtools/cluster/dev-slurm: one job with every core fills
one of them); the start times come from Slurm's real ``sbatch --test-only``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from devtools.wait import WaitTimeout, wait_for
from hpcft.cluster import slurm as slurm_mod
from hpcft.cluster.slurm import parse_test_only

from .test_memory import LLAMA3_8B, PUBLISHED, _stage

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "check.schema.json").read_text())
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def test_parse_test_only_on_captured_output():
    est = parse_test_only("sbatch: Job 7 to start at 2026-12-02T14:30:11 using 2 processors on nodes g[01-02] "
                          "in partition a100")
    assert (est.job_id, est.start, est.processors, est.nodes, est.partition) == (
        "7", "2026-12-02T14:30:11", 2, "g[01-02]", "a100")
    assert parse_test_only("sbatch: error: Batch job submission failed: Invalid account") is None


@pytest.mark.slurm
def test_start_time_parsed_from_slurms_own_output(slurm):
    est, text = slurm_mod.test_only_start(["-p", "v100b", "-t", "5", "--gres=gpu:1"])
    assert est is not None, text
    assert text.startswith("sbatch: Job ") and " to start at " in text   # stderr, as Slurm writes it
    assert est.partition == "v100b" and ISO.match(est.start) and est.processors >= 1
    refused, why = slurm_mod.test_only_start(["-p", "v100b", "-t", "5", "--gres=gpu:3"])
    assert refused is None and "Requested node configuration is not available" in why
    assert parse_test_only(why) is None


def _fill(partition: str) -> str:
    """A job holding every core of the partition's row until cancelled; waits until it runs."""
    job_id = subprocess.run(["sbatch", "--parsable", "-p", partition, "-c", str(os.cpu_count()), "-t", "1-00:00:00",
                             "-J", f"hpcft-test-fill-{partition}", "-o", "/dev/null", "--wrap", "sleep 1800"],
                            capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        wait_for(lambda: subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                                        text=True).stdout.strip(),
                 until=lambda state: state == "RUNNING", timeout=20, interval=0.2,
                 what=f"the filler job {job_id} in {partition} to start",
                 describe=lambda state: f"squeue state {state!r}")
    except WaitTimeout:
        subprocess.run(["scancel", job_id])
        raise
    return job_id


@pytest.fixture
def fill():
    started: list[str] = []

    def start(partition: str) -> str:
        started.append(_fill(partition))
        return started[-1]

    yield start
    if started:
        subprocess.run(["scancel", *started])


def _config(**extra) -> None:
    Path(os.environ["HPCFT_CONFIG"]).write_text(yaml.safe_dump({"partitions": {"gpu": ["v100", "v100b"]},
                                                                **extra}))


def _script_job(tmp_path: Path) -> Path:
    (tmp_path / "hello.py").write_text("print('hello')\n")
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump({"name": "auto", "script": "hello.py",
                                    "resources": {"partition": "auto", "gpus_per_node": "auto", "time": "00:05:00"}}))
    return path


def _chosen(run_hpcft, path: Path) -> dict:
    proc = run_hpcft("check", "--json", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["checks"][0]["name"] == "placement" and doc["checks"][0]["ok"]
    return doc["placement"]


@pytest.mark.slurm
def test_partition_auto_picks_the_free_one_and_follows(slurm, hpcft_home, run_hpcft, tmp_path, fill):
    _config()
    path = _script_job(tmp_path)
    first = fill("v100")
    placed = _chosen(run_hpcft, path)
    assert placed["chosen"]["partition"] == "v100b", placed
    assert placed["chosen"]["devices"] == 1 and placed["test_only_calls"] == 4   # 2 partitions x 1, 2 GPUs
    starts = {(c["partition"], c["devices"]): c["start"] for c in placed["candidates"]}
    assert starts[("v100", 1)] > starts[("v100b", 1)]   # the filled one starts when the filler ends
    assert "starts soonest" in placed["reason"]
    text = run_hpcft("check", str(path)).stdout   # the table, as a user reads it
    assert "✓ placement: v100b, 1 device(s) x 1 node(s)" in text and "→ v100b" in text

    subprocess.run(["scancel", first], check=True)   # free it, fill the other: the choice follows
    fill("v100b")
    placed = _chosen(run_hpcft, path)
    assert placed["chosen"]["partition"] == "v100", placed

    sub = run_hpcft("submit", "--json", str(path))
    assert sub.returncode == 0, sub.stdout + sub.stderr
    run = json.loads(sub.stdout)
    try:
        run_dir = Path(run["run_dir"])
        record = json.loads((run_dir / "placement.json").read_text())
        assert record["chosen"]["partition"] == "v100" and "starts soonest" in record["reason"]
        written = yaml.safe_load((run_dir / "job.yaml").read_text())["resources"]
        assert (written["partition"], written["gpus_per_node"]) == ("v100", 1)   # concrete in the run folder
    finally:
        subprocess.run(["scancel", str(run["job_id"])])


@pytest.mark.slurm
def test_a_job_that_fits_nowhere_is_refused_with_the_fixes(slurm, hpcft_home, run_hpcft, tmp_path):
    _stage(hpcft_home / "cache", tmp_path, LLAMA3_8B)
    _config(device_memory={"v100": "16G", "v100b": "32G"})
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({
        "name": "big", "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data),
                                 "method": "full", "batch_size": 1, "max_seq_length": 1024, "deepspeed": "auto"},
        "resources": {"partition": "auto", "gpus_per_node": "auto", "time": "00:10:00"}}))
    proc = run_hpcft("check", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("✗ placement"))
    assert "no partition fits" in line and "v100b, 2x1" in line and "use method: lora" in line
    assert "needs " in proc.stdout and " no " in proc.stdout   # the table says why each does not fit
    sub = run_hpcft("submit", str(path))
    assert sub.returncode == 2 and "placement: no partition fits" in sub.stderr
    assert not list((hpcft_home / "runs").glob("*-big-*"))


@pytest.mark.slurm
def test_a_sweep_places_all_its_points_at_once(slurm, hpcft_home, run_hpcft, tmp_path):
    small = next(cfg for name, _, cfg in PUBLISHED if name == "Qwen/Qwen2.5-0.5B-Instruct")
    _stage(hpcft_home / "cache", tmp_path, small, "Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b")
    _config(device_memory={"v100": "32G", "v100b": "32G"})
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "sw", "train": {"task": "causal-lm", "model": "qwen2.5-0.5b", "dataset": str(data),
                                "batch_size": 1, "max_seq_length": 512, "deepspeed": "auto"},
        "resources": {"partition": "auto", "gpus_per_node": "auto", "time": "00:10:00"},
        "sweep": {"grid": {"train.max_seq_length": [512, 8192]}}}))
    doc = json.loads(run_hpcft("check", "--json", str(path)).stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["placement"]["chosen"]["partition"] in ("v100", "v100b")
    placement = doc["checks"][0]
    assert placement["name"] == "placement" and placement["ok"], doc
    # one plan for the array, sized by its most demanding point: 8192 tokens of a 152k vocabulary
    line = next(x for x in placement["message"].splitlines() if x.startswith("→"))
    per_device = float(line.split()[4].split("/")[0])
    assert per_device > 20, line   # the 512-token point alone needs ~4
