"""hpcft.runs.ref: every kind of run reference on run and sweep folders written directly (no
Slurm: the commands' Slurm calls are replaced in-process), and that status, show, cancel and logs
all take them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.fakeruns import fake_run, fake_sweep
from hpcft.cluster import slurm
from hpcft.core.errors import NotFoundError
from hpcft.runs.index import RunRecord, RunStore, new_run_dir, now_iso
from hpcft.runs.ref import resolve, resolve_run
from hpcft.runs.sweep_record import Sweep

POINTS = [{"train.seed": s} for s in (1, 2, 3)]


@pytest.fixture
def runs(hpcft_home) -> Path:
    return hpcft_home / "runs"


@pytest.fixture
def store(runs) -> RunStore:
    return RunStore(runs)


def test_no_runs_yet(store):
    for ref in (None, "latest", "abc"):
        with pytest.raises(NotFoundError, match="no runs yet"):
            resolve(store, ref)


def test_latest_id_prefix_name_and_folder(runs, store, tmp_path):
    a = fake_run(runs, "alpha", job_id="101")
    b = fake_run(runs, "beta", job_id="102")
    again = fake_run(runs, "alpha", job_id="103")
    assert resolve(store, None).run_id == resolve(store, "latest").run_id == again.run_id
    assert resolve(store, a.run_id).run_id == a.run_id
    assert resolve(store, b.run_id[:-1]).run_id == b.run_id  # a unique prefix
    assert resolve(store, "alpha").run_id == again.run_id    # a name: the latest run with it
    assert resolve(store, str(a.dir)).run_id == a.run_id     # a folder, also outside the index
    other = fake_run(tmp_path / "elsewhere", "gamma")
    assert resolve(store, str(other.dir)).run_id == other.run_id


def test_job_ids(runs, store):
    first = fake_run(runs, "x", job_id="555")
    reused = fake_run(runs, "y", job_id="555")  # a local pid seen again: the latest run has it
    assert resolve(store, "555").run_id == reused.run_id != first.run_id
    # the index holds the job id known at submit time; run.json may learn it later
    paths = new_run_dir(runs, "late")
    record = RunRecord(run_id=paths.run_id, name="late", run_dir=str(paths.dir), job_file=None, kind="train",
                       executor="slurm", submitted_at=now_iso())
    store.add(record)
    record.job_id = "9001"
    store.save(record)
    assert resolve(store, "9001").run_id == paths.run_id



def test_the_portal_job_that_submitted_a_rerun_names_it(runs, store):
    """A SCOW portal rerun its allocation could not hold is submitted again from inside the
    portal's job: the portal lists that job, so its id names the run it submitted."""
    fake_run(runs, "orig", job_id="600")
    paths = new_run_dir(runs, "job-20261203-101010")
    store.add(RunRecord(run_id=paths.run_id, name="job-20261203-101010", run_dir=str(paths.dir), job_file=None,
                        kind="train", executor="slurm", submitted_at=now_iso(), job_id="702", rerun_of="x",
                        launched_by="701"))
    assert resolve(store, "701").run_id == resolve(store, "702").run_id == paths.run_id
    assert json.loads(store.index.read_text().splitlines()[-1])["launched_by"] == "701"

def test_sweep_by_id_prefix_array_id_and_folder(runs, store):
    run = fake_run(runs, "plain", job_id="4241")
    sweep = fake_sweep(runs, "swp", POINTS, array_job_id="4242")
    for ref in (sweep.sweep_id, sweep.sweep_id[:-1], "4242", sweep.run_dir):
        got = resolve(store, ref)
        assert isinstance(got, Sweep) and got.sweep_id == sweep.sweep_id, ref
    for ref in ("4242_1", sweep.tasks[1], str(sweep.task_dirs[1])):  # one task: a run
        got = resolve(store, ref)
        assert isinstance(got, RunRecord) and got.run_id == sweep.tasks[1] and got.sweep_index == 1, ref
    assert resolve(store, "4241").run_id == run.run_id
    assert resolve(store, "swp").run_id == sweep.tasks[-1]  # a name names a run


def test_ambiguous_prefix_lists_each_run_and_sweep_once(runs, store):
    a = fake_run(runs, "same")
    b = fake_run(runs, "same")
    sweep = fake_sweep(runs, "same", POINTS)
    common = ""
    while all(x.startswith(common + a.run_id[len(common)]) for x in (b.run_id, sweep.sweep_id)):
        common += a.run_id[len(common)]
    with pytest.raises(NotFoundError) as err:
        resolve(store, common)
    listed = str(err.value).split(": ", 1)[1].split(";")[0].split(", ")
    assert listed == [sweep.sweep_id, b.run_id, a.run_id]  # newest first; the sweep's runs as the sweep
    assert resolve(store, "same").run_id == sweep.tasks[-1]  # a name beats an ambiguous prefix


def test_not_found(runs, store, tmp_path):
    fake_run(runs, "x")
    with pytest.raises(NotFoundError, match=r"no run or job 'nope' \(see: hpcft runs\)"):
        resolve(store, "nope")
    with pytest.raises(NotFoundError, match="not an hpcft run folder or sweep folder"):
        resolve(store, str(tmp_path))


def test_a_deleted_sweep_folder_is_named(runs, store):
    sweep = fake_sweep(runs, "gone", POINTS)
    (Path(sweep.run_dir) / "sweep.json").unlink()
    with pytest.raises(NotFoundError, match=f"sweep {sweep.sweep_id}: .* no sweep record"):
        resolve(store, sweep.sweep_id)


def test_resolve_run_refuses_a_sweep_of_several(runs, store):
    sweep = fake_sweep(runs, "many", POINTS, array_job_id="77")
    with pytest.raises(NotFoundError) as err:
        resolve_run(store, "77")
    msg = str(err.value)
    assert sweep.tasks[0] in msg and "77_0 ... 77_2" in msg and f"hpcft show {sweep.sweep_id}" in msg
    one = fake_sweep(runs, "one", POINTS[:1], array_job_id="78")
    assert resolve_run(store, one.sweep_id).run_id == one.tasks[0]
    assert resolve_run(store, "77_2").run_id == sweep.tasks[2]


# --------------------------------------------------------------------------- the commands


@pytest.fixture
def no_slurm(monkeypatch):
    """Slurm as a controller that has forgotten every job; cancels are recorded."""
    cancelled: list[str] = []
    monkeypatch.setattr(slurm, "job_info", lambda job_id: None)
    monkeypatch.setattr(slurm, "array_states", lambda array_id: {})
    monkeypatch.setattr(slurm, "cancel", cancelled.append)
    return cancelled


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from hpcft.cli.main import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_status_show_cancel_take_a_run_or_a_sweep(runs, no_slurm, capsys):
    run = fake_run(runs, "solo", job_id="31")
    sweep = fake_sweep(runs, "grid", POINTS, array_job_id="32", state="RUNNING")
    rc, out, _ = _cli(capsys, "status", "32", "--json")
    assert rc == 0 and json.loads(out)["sweep_id"] == sweep.sweep_id
    rc, out, _ = _cli(capsys, "status", "solo", "--json")
    assert rc == 0 and json.loads(out)["run_id"] == run.run_id
    rc, out, _ = _cli(capsys, "show", sweep.sweep_id, "--json")
    assert rc == 0 and [r["run_id"] for r in json.loads(out)["ranking"]] == sweep.tasks
    rc, out, _ = _cli(capsys, "show", "31", "--json")
    assert rc == 0 and json.loads(out)["run_id"] == run.run_id
    rc, out, _ = _cli(capsys, "cancel", sweep.run_dir)
    assert rc == 0 and no_slurm == ["32"] and "cancelled job array 32" in out
    rc, out, _ = _cli(capsys, "cancel", "32_1")  # one task of the array
    assert rc == 0 and no_slurm == ["32", "32_1"] and sweep.tasks[1] in out


def test_logs_takes_a_run_and_refuses_a_sweep(runs, no_slurm, capsys):
    run = fake_run(runs, "logged", job_id="41")
    (run.dir / "job.41.out").write_text("hello from the job\n")
    fake_sweep(runs, "grid", POINTS, array_job_id="42")
    rc, out, _ = _cli(capsys, "logs", "logged")
    assert rc == 0 and out == "hello from the job\n"
    rc, _, err = _cli(capsys, "logs", "42")
    assert rc == 1 and "name one of its runs" in err
