"""devtools/xdist_groups.py: which tests share a worker, and which group starts first."""

from __future__ import annotations

import json

from devtools.testtime import write_durations
from devtools.xdist_groups import UNIT, group_of, load_durations, order


def test_a_module_that_touches_slurm_is_its_own_group_the_rest_share_unit():
    slurm = {"tests/test_multinode.py", "tests/test_sweep.py"}
    assert group_of("tests/test_multinode.py", slurm) == "test_multinode"
    assert group_of("tests/test_sweep.py", slurm) == "test_sweep"
    assert group_of("tests/test_job.py", slurm) == UNIT and group_of("tests/test_render.py", slurm) == UNIT


def test_longest_group_first_unmeasured_modules_count_a_second_a_test():
    groups = {"tests/test_job.py": UNIT, "tests/test_render.py": UNIT, "tests/test_multinode.py": "test_multinode",
              "tests/test_new.py": "test_new", "tests/test_sweep.py": "test_sweep"}
    counts = {"tests/test_job.py": 22, "tests/test_render.py": 44, "tests/test_multinode.py": 8,
              "tests/test_new.py": 90, "tests/test_sweep.py": 11}
    measured = {"tests/test_multinode.py": 369.4, "tests/test_sweep.py": 82.8, "tests/test_job.py": 0.2,
                "tests/test_render.py": 0.7}
    # unit = 0.9 s measured; test_new is unmeasured: 90 tests count 90 s
    assert order(groups, counts, measured) == ["test_multinode", "test_new", "test_sweep", UNIT]
    assert order(groups, counts, {}) == ["test_new", UNIT, "test_sweep", "test_multinode"]


def test_durations_written_from_a_lanes_records_and_read_back(tmp_path):
    records = tmp_path / "times"
    records.mkdir()
    rows = [{"test": "tests/test_a.py::t1", "wall": 1.5, "cpu": 1.0, "machine": 1.0, "worker": "gw0"},
            {"test": "tests/test_a.py::t2[x]", "wall": 2.0, "cpu": 1.0, "machine": 1.0, "worker": "gw0"},
            {"test": "tests/test_b.py::t", "wall": 9.0, "cpu": 0.1, "machine": 4.0, "worker": "gw1"}]
    (records / "gw0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (records / "gw1.jsonl").write_text(json.dumps(rows[2]) + "\n")
    out = tmp_path / "durations.json"
    write_durations(records, out)
    assert list(json.loads(out.read_text())["modules"]) == ["tests/test_b.py", "tests/test_a.py"]
    assert load_durations(out) == {"tests/test_b.py": 9.0, "tests/test_a.py": 3.5}
    assert load_durations(tmp_path / "missing.json") == {}


def test_the_committed_durations_name_modules_that_exist():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = load_durations()
    assert listed and all((root / m).is_file() for m in listed), [m for m in listed if not (root / m).is_file()]


def test_groups_reach_the_scheduler_through_the_announced_file(tmp_path, monkeypatch):
    """pytest 9.2 ignores xdist's @group node-id suffix (pytest-xdist #1386): gw0 publishes the
    groups in the file the controller announced, and the scheduler splits by them."""
    from devtools import xdist_groups as xg

    target = tmp_path / "groups.json"
    monkeypatch.setenv(xg.GROUPS_ENV, str(target))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    xg.publish({"tests/test_job.py::t": UNIT})
    assert not target.exists()   # only gw0 writes
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    xg.publish({"tests/test_job.py::t": UNIT, "tests/test_multinode.py::t[zero2]": "test_multinode"})
    published = xg.read_published(str(target))
    assert xg.scope_of("tests/test_job.py::t", published) == UNIT
    assert xg.scope_of("tests/test_multinode.py::t[zero2]", published) == "test_multinode"
    assert xg.scope_of("tests/test_new.py::t", published) == "tests/test_new.py"   # unpublished: its module
    assert xg.read_published(str(tmp_path / "missing")) == {} and xg.read_published(None) == {}
