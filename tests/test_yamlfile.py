"""Reading YAML as a hostile user writes it: every refusal is one line, fast, and nothing
is ever constructed from a tag (issue 8)."""

import time

import pytest

from hpcft.core.config import load_settings
from hpcft.core.errors import ConfigError
from hpcft.core.yamlfile import MAX_NODES, load_yaml_file, parse_set_options, parse_yaml, yaml_load


def refused(text, **kw):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "j.yaml", **kw)
    return info.value.lines()


def alias_bomb(levels=9, width=9):
    lines = ["name: bomb", "script: train.py", "l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast():
    start = time.monotonic()
    lines = refused(alias_bomb())
    assert time.monotonic() - start < 5
    assert lines == [f"j.yaml:8: aliases expand to more than {MAX_NODES} values (an alias bomb?); "
                     "a job file needs a few dozen"]  # l5, the first key whose value blows up


def test_small_aliases_still_work():
    doc = parse_yaml("a: &m [x, y]\nb: *m\n", "j.yaml")
    assert doc.data == {"a": ["x", "y"], "b": ["x", "y"]} and doc.problems == []


def test_recursive_alias():
    assert refused("a: &a [1, *a]\n") == ["j.yaml:1: an alias refers to a value that contains it (recursive alias)"]


def test_deep_nesting():
    assert refused("a: " + "[" * 200 + "]" * 200 + "\n") == ["j.yaml:1: nested more than 64 levels deep"]


def test_too_many_values_in_the_text_itself(monkeypatch):
    monkeypatch.setattr("hpcft.core.yamlfile.MAX_NODES", 1000)  # the real bound takes seconds to reach
    text = "a: [" + ", ".join(["1"] * 1010) + "]\n"
    assert refused(text) == ["j.yaml:1: more than 1000 values"]


def test_time_bound(monkeypatch):
    monkeypatch.setattr("hpcft.core.yamlfile.MAX_SECONDS", 0)  # any document of 1024+ values is now too slow
    assert refused("a: [" + ", ".join(["1"] * 2000) + "]\n") == ["j.yaml:1: took more than 0 s to read"]
    assert parse_yaml("a: [1, 2]\n", "j.yaml").data == {"a": [1, 2]}  # small documents never reach the check


def test_duplicate_keys_name_both_lines():
    doc = parse_yaml("name: a\nresources:\n  time: 2h\n  time: 3h\nname: b\n", "j.yaml")
    assert [p for _, p in doc.problems] == ["j.yaml:4: resources.time: duplicate key (first at line 3)",
                                            "j.yaml:5: name: duplicate key (first at line 1)"]


def test_tags_are_never_constructed(tmp_path):
    marker = tmp_path / "pwned"
    doc = parse_yaml(f"name: !!python/object/apply:os.system ['touch {marker}']\nargs: !!set {{a, b}}\n", "j.yaml")
    assert not marker.exists() and doc.data == {}
    assert [p for _, p in doc.problems] == [
        "j.yaml:1: name: YAML tag !!python/object/apply:os.system is not allowed; write a plain value",
        "j.yaml:2: args: YAML tag !!set is not allowed; write a plain value"]
    assert refused("!!python/object:os.system {}\n") == [
        "j.yaml:1: YAML tag !!python/object:os.system is not allowed; write a plain value"]


def test_keys_must_be_text():
    doc = parse_yaml("1: a\nyes: b\n? [x]\n: c\nok: d\n", "j.yaml")
    assert doc.data == {"ok": "d"}
    assert [p for _, p in doc.problems] == [
        "j.yaml:1: key '1' is read as 1, not text; quote it (\"1\": ...)",
        "j.yaml:2: key 'yes' is read as True, not text; quote it (\"yes\": ...)",
        "j.yaml:3: a key must be text, not a list"]


def test_merge_keys_are_resolved_explicit_keys_win():
    doc = parse_yaml("base: &b {partition: gpu, time: 2h}\nresources:\n  <<: *b\n  time: 3h\n", "j.yaml")
    assert doc.data["resources"] == {"time": "3h", "partition": "gpu"} and doc.problems == []
    assert doc.line_of(("resources", "time")) == 4 and doc.line_of(("resources", "partition")) == 1
    bad = parse_yaml("resources:\n  <<: 5\n", "j.yaml")
    assert [p for _, p in bad.problems] == [
        "j.yaml:2: resources: <<: merges a mapping or a list of mappings (<<: *defaults)"]


def test_not_a_mapping_and_empty():
    assert refused("- a\n- b\n") == ["j.yaml:1: the file must be a mapping of keys (key: value lines), not a list"]
    assert refused("hello\n") == ["j.yaml:1: the file must be a mapping of keys (key: value lines), "
                                  "not a single value ('hello')"]
    empty = "j.yaml: the file is empty; a job file is a mapping such as 'name: ...' with 'train:' or 'script:'"
    assert refused("", empty_ok=False) == [empty]
    assert refused("# only a comment\n", empty_ok=False) == [empty]
    assert parse_yaml("", "c.yaml").data == {}  # an empty config file is fine


def test_syntax_and_control_characters_one_line():
    assert refused("name: x\n---\nname: y\n") == [
        "j.yaml:2: YAML syntax error: expected a single document in the stream but found another document"]
    assert refused("name: \x07\n") == ["j.yaml:1: control character 0x07 is not allowed in a YAML file"]


def test_odd_scalars_stay_text():
    doc = parse_yaml("d: 2024-13-45\nn: " + "1" * 5000 + "\n", "j.yaml")
    assert doc.data["d"] == "2024-13-45" and doc.data["n"] == "1" * 5000


def file_refused(path):
    with pytest.raises(ConfigError) as info:
        load_yaml_file(path)
    return info.value.lines()


def test_file_level_refusals(tmp_path, monkeypatch):
    assert file_refused(tmp_path / "none.yaml") == [f"{tmp_path / 'none.yaml'}: file not found"]
    assert file_refused(tmp_path) == [f"{tmp_path}: is a directory, not a YAML file"]
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n#" + "a" * 1_000_001 + "\n")
    assert file_refused(big) == [f"{big}: larger than 1 MB; a YAML file hpcft reads is a few kB "
                                 "(is this the right file?)"]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: x\nscript: caf\xe9.py\n")
    assert file_refused(latin) == [f"{latin}:2: not UTF-8 text (byte 0xe9 at column 12); save the file as UTF-8"]
    assert load_yaml_file(_write(tmp_path / "bom.yaml", b"\xef\xbb\xbfname: x\n")).data == {"name": "x"}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_unreadable_file(tmp_path, monkeypatch):
    path = _write(tmp_path / "secret.yaml", b"name: x\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", denied)  # root reads any mode; fake the refusal
    assert file_refused(path) == [f"{path}: permission denied: you cannot read this file"]


def test_set_values_get_the_same_treatment():
    assert parse_set_options(["args=[a, b]", "name=x[1", "resources.time=02:00:00"]) == [
        ("args", ["a", "b"]), ("name", "x[1"), ("resources.time", "02:00:00")]
    with pytest.raises(ConfigError) as info:
        parse_set_options(["name=!!python/object/apply:os.system [ls]", "env.vars={A: 1, A: 2}",
                           "args=&a [*a]", "bad"])
    assert info.value.lines() == [
        "--set name: YAML tag !!python/object/apply:os.system is not allowed; write a plain value",
        "--set env.vars: A: duplicate key",
        "--set args: an alias refers to a value that contains it (recursive alias)",
        "--set 'bad': expected KEY=VALUE, e.g. --set resources.time=02:00:00"]
    with pytest.raises(ConfigError) as info:
        yaml_load(alias_bomb(), "--set x")
    assert info.value.lines() == [f"--set x: aliases expand to more than {MAX_NODES} values (an alias bomb?); "
                                  "a job file needs a few dozen"]


def test_cluster_config_same_treatment(tmp_path, monkeypatch):
    cluster = _write(tmp_path / "cluster.yaml", b"account: a\naccount: b\nqos: !!python/name:os.system ''\n")
    monkeypatch.setenv("HPCFT_CONFIG", str(cluster))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.lines() == [f"{cluster}:2: account: duplicate key (first at line 1)",
                                  f"{cluster}:3: qos: YAML tag !!python/name:os.system is not allowed; "
                                  "write a plain value"]
    monkeypatch.setenv("HPCFT_CONFIG", str(tmp_path))  # a directory where the file should be
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.lines() == [f"{tmp_path}: is a directory, not a YAML file"]
    user = _write(tmp_path / "user.yaml", alias_bomb().encode())
    monkeypatch.setenv("HPCFT_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("HPCFT_USER_CONFIG", str(user))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "aliases expand to more than" in info.value.lines()[0] and len(info.value.lines()) == 1
