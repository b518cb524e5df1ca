"""Bad job files through the real ``hpcft`` command: submit, check and render all print the
same complete list, one line per problem, exit 2, and nothing is submitted (issue 8)."""

import time

import pytest

from tests.conftest import hpcft
from tests.test_yamlfile import alias_bomb

PROBLEM_JOB = "name: x\nscript: nope.py\nresources:\n  time: soon\n  nodes: 0\nname: y\n"


def job_file(tmp_path, content, name="job.yaml"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def nothing_submitted(home):
    runs = home / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def run_all(path, *extra):
    """stderr lines of submit, check and render for one job file; each must exit 2."""
    out = {}
    for command in (["submit", "--executor", "local"], ["check", "--executor", "local"], ["render"]):
        proc = hpcft(command[0], str(path), *command[1:], *extra, timeout=30)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        out[command[0]] = proc.stderr.strip().splitlines()
        if command[0] == "check":
            assert proc.stdout.strip() == f"✗ job file: {len(out['check'])} problem(s)"
    assert out["submit"] == out["check"] == out["render"], out
    return out["submit"]


def test_every_problem_at_once_in_file_order(tmp_path, hpcft_home):
    path = job_file(tmp_path, PROBLEM_JOB)
    assert run_all(path) == [
        f"{path}:2: script: file not found: {tmp_path / 'nope.py'}",
        f"{path}:4: resources.time: unparsable time 'soon'; use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m",
        f"{path}:5: resources.nodes: Input should be greater than or equal to 1 (got 0)",
        f"{path}:6: name: duplicate key (first at line 1)",
    ]
    nothing_submitted(hpcft_home)


def test_alias_bomb_fails_fast(tmp_path, hpcft_home):
    path = job_file(tmp_path, alias_bomb())
    start = time.monotonic()
    proc = hpcft("submit", str(path), "--executor", "local", timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"{path}:8: aliases expand to more than 100000 values (an alias bomb?); "
                                   "a job file needs a few dozen")
    nothing_submitted(hpcft_home)


@pytest.mark.parametrize("content, message", [
    ("", ": the file is empty; a job file is a mapping such as 'name: ...' with 'train:' or 'script:'"),
    ("- name: x\n", ":1: the file must be a mapping of keys (key: value lines), not a list"),
    ("just text\n", ":1: the file must be a mapping of keys (key: value lines), not a single value ('just text')"),
    (b"name: \xff\n", ":1: not UTF-8 text (byte 0xff at column 7); save the file as UTF-8"),
    ("!!python/object/apply:os.system ['touch pwned']\n",
     ":1: YAML tag !!python/object/apply:os.system is not allowed; write a plain value"),
    ("name: x\nscript: t.py\n---\nname: y\n",
     ":3: YAML syntax error: expected a single document in the stream but found another document"),
    ("name: " + "[" * 100 + "]" * 100 + "\n", ":1: nested more than 64 levels deep"),
    ("name: x\n#" + "a" * 1_000_001 + "\n",
     ": larger than 1 MB; a YAML file hpcft reads is a few kB (is this the right file?)"),
])
def test_hostile_job_files_one_line_exit_2(tmp_path, hpcft_home, content, message):
    path = job_file(tmp_path, content)
    assert run_all(path) == [f"{path}{message}"]
    assert not (tmp_path / "pwned").exists()
    nothing_submitted(hpcft_home)


def test_directory_and_missing_file(tmp_path, hpcft_home):
    assert run_all(tmp_path) == [f"{tmp_path}: is a directory, not a YAML file"]
    assert run_all(tmp_path / "none.yaml") == [f"{tmp_path / 'none.yaml'}: file not found"]
    nothing_submitted(hpcft_home)


def test_hostile_set_values(tmp_path, hpcft_home):
    (tmp_path / "t.py").write_text("")
    path = job_file(tmp_path, "name: x\nscript: t.py\n")
    assert run_all(path, "--set", "args=&a [*a]", "--set", "name=!!python/name:os.system ''",
                   "--set", "resources.time=soon") == [
        "--set args: an alias refers to a value that contains it (recursive alias)",
        "--set name: YAML tag !!python/name:os.system is not allowed; write a plain value",
    ]
    assert run_all(path, "--set", "resources.time=soon") == [
        "--set resources.time: resources.time: unparsable time 'soon'; use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m"]
    nothing_submitted(hpcft_home)


def test_bad_cluster_config(tmp_path, hpcft_home):
    (tmp_path / "t.py").write_text("")
    path = job_file(tmp_path, "name: x\nscript: t.py\n")
    cluster = job_file(tmp_path, "account: a\naccount: b\n", name="cluster.yaml")
    proc = hpcft("submit", str(path), "--executor", "local", env={"HPCFT_CONFIG": str(cluster)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{cluster}:2: account: duplicate key (first at line 1)"
    nothing_submitted(hpcft_home)


def test_output_dir_that_cannot_be_created(tmp_path, hpcft_home):
    (tmp_path / "t.py").write_text("")
    path = job_file(tmp_path, "name: x\nscript: t.py\noutput_dir: /proc/hpcft-out\n")
    check = hpcft("check", str(path), "--executor", "local")
    assert check.returncode == 2
    assert "✗ output_dir: /proc/hpcft-out: under /proc, a virtual filesystem; choose a folder on a shared " \
           "filesystem" in check.stdout.splitlines()
    submit = hpcft("submit", str(path), "--executor", "local")
    assert submit.returncode == 2
    assert submit.stderr.strip() == (f"{path}: output_dir: /proc/hpcft-out: under /proc, a virtual filesystem; "
                                     "choose a folder on a shared filesystem")
    nothing_submitted(hpcft_home)
