"""Preprocessing off the GPU (issue 28), without Slurm: the jobs that have nothing to
preprocess are refused in one line with exit 2 and nothing queued; the dependency options and
Slurm's DependencyNeverSatisfied, parsed from captured output."""

from __future__ import annotations

import yaml

from hpcft.cluster import slurm

# `scontrol show job -o` of a job whose afterok dependency failed (dev cluster, Slurm 22.05)
NEVER = ("JobId=7 JobName=pre-fails UserId=root(0) GroupId=root(0) Priority=1 JobState=CANCELLED "
         "Reason=DependencyNeverSatisfied Dependency=afterok:6(failed) Requeue=1 Restarts=0 ExitCode=0:0 "
         "RunTime=00:00:00 TimeLimit=00:15:00 Partition=cpu NodeList=(null)")


def test_dependency_options_and_a_never_satisfied_dependency_read_in_one_line():
    assert slurm.after_ok(["6"]) == {"dependency": "afterok:6", "kill-on-invalid-dep": "yes"}
    for bad in ([], ["6;rm -rf /"], ["x"]):
        try:
            slurm.after_ok(bad)
        except slurm.SlurmError:
            continue
        raise AssertionError(f"after_ok accepted {bad!r}")
    info = slurm.parse_scontrol_job(NEVER)
    assert slurm.parse_dependency(info.extra["Dependency"]) == [("afterok", "6", "failed")]
    assert slurm.dependency_problem(info) == ("job 6 did not complete successfully, so this job never started "
                                              "(DependencyNeverSatisfied)")
    assert slurm.dependency_problem(slurm.parse_scontrol_job(NEVER.replace("DependencyNeverSatisfied",
                                                                           "Dependency"))) is None


def _write(tmp_path, name, doc) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "executor": "slurm", **doc}))
    return str(path)


def test_jobs_without_a_tokenized_cache_are_refused_in_one_line_exit_2_nothing_queued(tmp_path, hpcft_home,
                                                                                      run_hpcft):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": 0}\n')
    (tmp_path / "s.py").write_text("print(1)\n")
    cases = {
        _write(tmp_path, "cls", {"train": {"task": "sequence-classification", "model": "m", "dataset": str(data)}}):
            "task: sequence-classification has no tokenized-data cache",
        _write(tmp_path, "scr", {"script": "s.py"}): "a script job has no tokenized-data cache",
        _write(tmp_path, "off", {"train": {"task": "causal-lm", "model": "m", "dataset": str(data),
                                           "data_cache": False}}): "train.data_cache is false",
    }
    for path, why in cases.items():
        proc = run_hpcft("preprocess", path)
        assert proc.returncode == 2 and proc.stderr.strip() == f"{path}: preprocess: {why}" + (
            " (only task: causal-lm)" if "sequence" in why else
            " (only train: jobs with task: causal-lm)" if "script" in why else
            ": there is no cache for a CPU job to fill"), proc.stderr
    # train.preprocess on a task without the cache: the schema's one line
    proc = run_hpcft("submit", _write(tmp_path, "cls2", {"train": {
        "task": "sequence-classification", "model": "m", "dataset": str(data), "preprocess": "cpu-job"}}))
    assert proc.returncode == 2 and "preprocess: only for task: causal-lm" in proc.stderr, proc.stderr
    assert not (hpcft_home / "preprocess").exists() and not any((hpcft_home / "runs").glob("*"))


def test_standalone_preprocess_folders_are_pruned_once_finished_never_while_queued(tmp_path):
    from hpcft.core.preprocess import RECORD
    from hpcft.submit.preprocess import prune

    root = tmp_path / "preprocess"
    root.mkdir()
    for i in range(5):
        f = root / f"20261207-0{i}0000-job-{i:04x}"
        f.mkdir()
        (f / "job.log").write_text("log")
        if i != 1:
            (f / RECORD).write_text("{}")              # its job ended
    (root / "20261207-000000-link").symlink_to(tmp_path)  # not a plain folder: never followed
    gone = prune(root, keep=2)
    assert [p.name for p in gone] == ["20261207-000000-job-0000", "20261207-020000-job-0002"]
    left = sorted(p.name for p in root.iterdir())
    assert left == ["20261207-000000-link", "20261207-010000-job-0001",        # still queued: kept
                    "20261207-030000-job-0003", "20261207-040000-job-0004"]   # the newest two finished
    assert tmp_path.exists() and (tmp_path / "preprocess").is_dir()
