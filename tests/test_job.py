"""Job file validation: every bad input gets one line naming file, line and field; exit 2."""

import textwrap

import pytest

from hpcft.core.config import load_settings
from hpcft.core.errors import ConfigError
from hpcft.core.job_load import load_job
from tests.conftest import hpcft


def write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    (tmp_path / "train.py").write_text("print('hi')\n")
    return path


def problems(tmp_path, text, sets=()):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(path, load_settings(), list(sets))
    return info.value.lines(), str(path)


def test_valid_minimal_script_job(tmp_path):
    path = write(tmp_path, """\
        name: demo
        script: train.py
        args: [--epochs, 3, true]
        resources: {time: 01:30:00, gpus_per_node: 1}
        """)
    loaded = load_job(path, load_settings())
    job = loaded.job
    assert job.kind == "script" and job.args == ["--epochs", "3", "true"]
    assert job.resources.time == "01:30:00" and job.resources.time_seconds == 5400  # not YAML sexagesimal
    assert job.resources.device == "gpu" and loaded.script_path == tmp_path / "train.py"


def test_valid_train_job_and_float_literals(tmp_path):
    path = write(tmp_path, """\
        name: mrpc
        train:
          model: bert-base-uncased
          dataset: glue/mrpc
          learning_rate: 2e-5
          deepspeed: 2
        """)
    job = load_job(path, load_settings()).job
    assert job.train.learning_rate == 2e-5  # PyYAML would give the string '2e-5'
    assert job.train.deepspeed.stage == 2
    assert job.all_assets().models == ["bert-base-uncased"]


def test_yaml_syntax_error_has_line(tmp_path):
    lines, path = problems(tmp_path, "name: x\nresources:\n  time: [1\n  nodes: 2\n")
    assert len(lines) == 1 and lines[0].startswith(f"{path}:") and "YAML syntax error" in lines[0]
    assert lines[0].split(":")[1].isdigit()


def test_unknown_key_suggests_nearest(tmp_path):
    lines, path = problems(tmp_path, """\
        name: x
        script: train.py
        resources:
          gpu_per_node: 2
        """)
    assert lines == [f"{path}:4: unknown key 'gpu_per_node' in resources; did you mean 'gpus_per_node'? "
                     f"(valid: partition, nodes, gpus_per_node, npus_per_node, cpus_per_task, mem, time, account, "
                     f"qos, exclusive, constraint, sbatch)"]


def test_all_problems_at_once(tmp_path):
    lines, path = problems(tmp_path, """\
        name: x
        script: train.py
        resources:
          nodes: 0
          gpus_per_node: -1
          time: soon
          cpus_per_task: lots
        env:
          vars: {"1BAD": x}
        """)
    text = "\n".join(lines)
    assert len(lines) == 5, text
    assert f"{path}:4: resources.nodes: Input should be greater than or equal to 1" in text
    assert f"{path}:5: resources.gpus_per_node" in text
    assert f"{path}:6: resources.time: unparsable time 'soon'" in text
    assert f"{path}:7: resources.cpus_per_task: Input should be a valid integer" in text
    assert f"{path}:9: env.vars: invalid environment variable name '1BAD'" in text


def test_missing_required_and_nothing_to_run(tmp_path):
    lines, path = problems(tmp_path, "resources: {nodes: 1}\n")
    text = "\n".join(lines)
    assert "name: required field is missing" in text
    assert "nothing to run" in text


def test_gpus_and_npus_both(tmp_path):
    lines, _ = problems(tmp_path, "name: x\nscript: train.py\nresources: {gpus_per_node: 1, npus_per_node: 1}\n")
    assert any("gpus_per_node and npus_per_node are both set" in ln for ln in lines)


def test_missing_script_path(tmp_path):
    lines, path = problems(tmp_path, "name: x\nscript: nope.py\n")
    assert lines == [f"{path}:2: script: file not found: {tmp_path / 'nope.py'}"]


def test_wrong_type_and_control_chars(tmp_path):
    lines, _ = problems(tmp_path, 'name: "a\\nb"\nscript: train.py\nresources: {exclusive: maybe}\n')
    text = "\n".join(lines)
    assert "name: must be a single line" in text
    assert "resources.exclusive: Input should be a valid boolean" in text


def test_bad_sbatch_extra_and_mem(tmp_path):
    lines, _ = problems(tmp_path, "name: x\nscript: train.py\nresources: {sbatch: ['-x; rm'], mem: lots}\n")
    text = "\n".join(lines)
    assert "resources.sbatch" in text and "resources.mem" in text


def test_set_overrides_and_bad_set(tmp_path):
    path = write(tmp_path, "name: x\nscript: train.py\n")
    from hpcft.core.yamlfile import parse_set_options

    loaded = load_job(path, load_settings(), parse_set_options(["resources.time=02:00:00", "resources.nodes=2"]))
    assert loaded.job.resources.time_seconds == 7200 and loaded.job.resources.nodes == 2
    with pytest.raises(ConfigError):
        parse_set_options(["novalue"])


def test_layers_cluster_user_job_set(tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("account: lab\njob_defaults: {resources: {partition: gpu, time: '10'}}\n")
    user = tmp_path / "user.yaml"
    user.write_text("job_defaults: {resources: {time: '20'}}\n")
    monkeypatch.setenv("HPCFT_CONFIG", str(cluster))
    monkeypatch.setenv("HPCFT_USER_CONFIG", str(user))
    settings = load_settings()
    assert settings.account == "lab"
    path = write(tmp_path, "name: x\nscript: train.py\n")
    assert load_job(path, settings).job.resources.time == "20"            # user over cluster
    path = write(tmp_path, "name: x\nscript: train.py\nresources: {time: '30'}\n")
    job = load_job(path, settings, [("resources.time", "40")]).job
    assert job.resources.time == "40" and job.resources.partition == "gpu"  # --set over job over config


def test_bad_cluster_config_names_file(tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("partitons: {gpu: [a]}\n")
    monkeypatch.setenv("HPCFT_CONFIG", str(cluster))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.lines()[0].startswith(f"{cluster}:1: unknown key 'partitons'; did you mean 'partitions'?")


def test_cli_exit_2_one_line_per_problem(tmp_path):
    path = write(tmp_path, "name: x\nscript: nope.py\nresources: {nodes: 0, gpu_per_node: 2}\n")
    proc = hpcft("submit", str(path), "--executor", "local")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr  # the missing script too, in file order
    assert lines[0] == f"{path}:2: script: file not found: {tmp_path / 'nope.py'}"
    assert all(ln.startswith(f"{path}:3:") for ln in lines[1:]), proc.stderr


def test_schema_and_file_problems_together_in_file_order(tmp_path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 9}, "train_micro_batch_size_per_gpu": 4}')
    lines, path = problems(tmp_path, """\
        resources:
          time: soon
        name: x
        train:
          model: m
          dataset: d
          batch_size: lots
          deepspeed: ds.json
        workdir: nowhere
        env: {vars: {"1BAD": x}}
        """)
    ds = tmp_path / "ds.json"
    assert lines == [
        f"{path}:2: resources.time: unparsable time 'soon'; use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m",
        f"{path}:7: train.batch_size: Input should be a valid integer, unable to parse string as an integer "
        "(got 'lots')",
        # the DeepSpeed file is still checked; batch_size is invalid, so it is not compared
        f"{path}:8: train.deepspeed: {ds}: zero_optimization.stage must be 0, 1, 2 or 3 (got 9)",
        f"{path}:9: workdir: directory not found: {tmp_path / 'nowhere'}",
        f"{path}:10: env.vars: invalid environment variable name '1BAD': use letters, digits and _, "
        "not starting with a digit",
    ]


def test_missing_script_shown_with_bad_time(tmp_path):
    lines, path = problems(tmp_path, "name: x\nscript: nope.py\nresources: {time: soon}\n")
    assert lines == [f"{path}:2: script: file not found: {tmp_path / 'nope.py'}",
                     f"{path}:3: resources.time: unparsable time 'soon'; use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m"]


def test_missing_deepspeed_file_and_lines_without_number_last(tmp_path):
    lines, path = problems(tmp_path, "train: {model: m, dataset: d, deepspeed: {config: none.json}}\n"
                                     "resources: {nodes: 0}\n")
    assert lines == [f"{path}:1: train.deepspeed: config file not found: {tmp_path / 'none.json'}",
                     f"{path}:2: resources.nodes: Input should be greater than or equal to 1 (got 0)",
                     f"{path}: name: required field is missing"]


def test_script_is_a_directory_and_unknown_user(tmp_path):
    (tmp_path / "pkg").mkdir()
    lines, path = problems(tmp_path, "name: x\nscript: pkg\nworkdir: ~no-such-user-hpcft/w\n")
    assert lines == [f"{path}:2: script: file is a directory: {tmp_path / 'pkg'}",
                     f"{path}:3: workdir: cannot expand '~no-such-user-hpcft': no such user"]


def test_duplicate_key_with_the_schema_problems(tmp_path):
    lines, path = problems(tmp_path, "name: x\nscript: train.py\nresources: {nodes: 0}\nname: y\n")
    assert lines == [f"{path}:3: resources.nodes: Input should be greater than or equal to 1 (got 0)",
                     f"{path}:4: name: duplicate key (first at line 1)"]


def test_set_problems_name_the_option_not_a_file_line(tmp_path):
    lines, path = problems(tmp_path, "name: x\nscript: train.py\nresources:\n  time: 2h\n",
                           sets=[("resources.time", "soon"), ("script", "gone.py")])
    assert lines == ["--set resources.time: resources.time: unparsable time 'soon'; "
                     "use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m",
                     f"--set script: script: file not found: {tmp_path / 'gone.py'}"]


def test_empty_and_list_job_files(tmp_path):
    lines, path = problems(tmp_path, "")
    assert lines == [f"{path}: the file is empty; a job file is a mapping such as 'name: ...' "
                     "with 'train:' or 'script:'"]
    lines, path = problems(tmp_path, "- name: x\n")
    assert lines == [f"{path}:1: the file must be a mapping of keys (key: value lines), not a list"]


def test_set_does_not_leak_into_the_settings(tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("job_defaults: {resources: {time: '10'}}\n")
    monkeypatch.setenv("HPCFT_CONFIG", str(cluster))
    settings = load_settings()
    path = write(tmp_path, "name: x\nscript: train.py\n")
    assert load_job(path, settings, [("resources.time", "20")]).job.resources.time == "20"
    assert settings.job_defaults == {"resources": {"time": "10"}}
