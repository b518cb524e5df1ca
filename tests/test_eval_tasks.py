"""hpcft's benchmark table against the installed lm-evaluation-harness's own task files, task names
(groups, subjects, typos), and the bad inputs of `hpcft eval` / `hpcft stage --eval` / job files:
one line each, exit 2, nothing run or written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from hpcft.core.errors import ConfigError
from hpcft.core.eval_tasks import BENCHMARKS, TASKS, read_scores, resolve_tasks


class _Loader(yaml.SafeLoader):
    """The harness's YAML has ``!function`` tags; only the plain keys matter here."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _harness_tasks() -> dict[str, dict]:
    """Every task file of the installed harness under ceval/cmmlu/mmlu-default/gsm8k, includes resolved."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("lm-eval is not installed in this venv (hpcft[eval]; scripts/setup installs it)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    out: dict[str, dict] = {}
    for folder in ("ceval", "cmmlu", "mmlu/default", "gsm8k"):
        for path in (root / folder).iterdir():
            if path.suffix != ".yaml" and not path.name.startswith("_default"):
                continue
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
            if "include" in data:
                data = {**yaml.load((path.parent / data["include"]).read_text(encoding="utf-8"), Loader=_Loader),
                        **data}
            name = data["group"] if "group" in data else data.get("task")
            if isinstance(name, str):
                out[name] = data
    return out


def test_the_table_matches_the_harness_task_files():
    harness = _harness_tasks()
    for b in BENCHMARKS.values():
        group = harness[b.group]
        if b.subtask:  # a group: its members (sub-groups for mmlu) cover exactly our subjects
            subs = {n: d for n, d in harness.items() if n.startswith(b.subtask.format("")) and "dataset_name" in d}
            assert {d["dataset_name"] for d in subs.values()} == set(b.subjects), b.name
            assert {d["dataset_path"] for d in subs.values()} == {b.repo}, b.name
            for name, d in subs.items():
                assert name == b.subtask.format(d["dataset_name"])
                splits = [d.get(k) for k in ("validation_split", "test_split", "fewshot_split") if d.get(k)]
                assert set(splits) == set(b.splits), (name, splits)
            if b.name != "mmlu":   # ceval-valid and cmmlu list their subtasks; mmlu's go through 4 sub-groups
                assert set(group["task"]) == set(subs), b.name
        else:
            assert (group["dataset_path"], group["dataset_name"]) == (b.repo, b.subjects[0])
            assert {group["test_split"], group["fewshot_split"]} == set(b.splits)
    assert len(resolve_tasks(["mmlu"])[0].datasets) == 57 and len(resolve_tasks(["ceval"])[0].datasets) == 52
    assert len(resolve_tasks(["cmmlu"])[0].datasets) == 67


def test_names_groups_subjects_and_typos():
    tasks = resolve_tasks(["ceval,mmlu_anatomy", "gsm8k", "ceval-valid"])
    assert [t.name for t in tasks] == ["ceval", "mmlu_anatomy", "gsm8k"]  # ceval-valid is ceval
    assert tasks[0].harness == "ceval-valid" and tasks[1].datasets == ["cais/mmlu:anatomy"]
    assert tasks[2].datasets == ["openai/gsm8k:main"]
    with pytest.raises(ConfigError) as err:
        resolve_tasks(["mmlu,gsm8", "cevall", "zzzzzz"])
    lines = err.value.lines()
    assert lines[0] == "--tasks: unknown eval task 'gsm8'; did you mean gsm8k?"
    assert lines[1].startswith("--tasks: unknown eval task 'cevall'; did you mean ceval")
    assert lines[2].startswith("--tasks: unknown eval task 'zzzzzz'; known: ceval, cmmlu, mmlu, gsm8k")
    assert "mmlu_anatomy" in TASKS and "cmmlu_agronomy" in TASKS and "ceval-valid_law" in TASKS


def test_bad_inputs_one_line_each_exit_2_nothing_written(run_hpcft, hpcft_home, tmp_path):
    proc = run_hpcft("eval", "llama3-8b-instruct", "--tasks", "mmlux")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["--tasks: unknown eval task 'mmlux'; did you mean mmlu, cmmlu, cmmlu_arts?"]
    proc = run_hpcft("eval", "llama3-8b-instruct", "--tasks", "gsm8k,ceval")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "eval task gsm8k: its data is not staged (openai/gsm8k:main); on the login node run: hpcft stage --eval gsm8k",
        "eval task ceval: its data is not staged (52 of its 52 configs, e.g. ceval/ceval-exam:accountant); on the "
        "login node run: hpcft stage --eval ceval"]
    proc = run_hpcft("stage", "--eval", "mmlu", "gsm9k")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "--eval: unknown eval task 'gsm9k'; did you mean gsm8k?"]
    assert not (hpcft_home / "runs").exists() or not list((hpcft_home / "runs").iterdir())
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc",
                                                          "eval_tasks": ["mmlu"]}}))
    proc = run_hpcft("render", str(job))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"{job}:4: train.eval_tasks: benchmarks score generative models: only for LLM tasks (task: causal-lm)"]


def test_scores_show_up_in_compare(tmp_path):
    from hpcft.runs.compare import compare, headers, table_rows
    from hpcft.runs.index import RunRecord

    records = []
    for i, (name, score) in enumerate((("base", 0.25), ("tuned", 0.75))):
        run = tmp_path / name
        (run / "eval").mkdir(parents=True)
        (run / "eval" / "mmlu.json").write_text(json.dumps({"task": "mmlu", "score": score, "metric": "acc"}))
        (run / "eval" / "not-a-score.json").write_text("[]")
        records.append(RunRecord(run_id=f"r{i}", name=name, run_dir=str(run), job_file=None, kind="eval",
                                 executor="local", submitted_at=""))
    assert set(read_scores(tmp_path / "tuned")) == {"mmlu"}
    rows = compare(records)
    assert headers(rows)[-1] == "mmlu" and [r[-1] for r in table_rows(rows)] == ["0.2500", "0.7500"]


def test_a_group_score_is_the_harness_aggregate_else_the_mean_of_its_subjects():
    from hpcft.worker.after_training.evaluate import summarize

    mmlu = resolve_tasks(["mmlu"])[0]
    results = {"results": {"mmlu": {"alias": "mmlu", "acc,none": 0.5, "acc_stderr,none": "N/A"},
                           "mmlu_anatomy": {"acc,none": 0.25}, "mmlu_virology": {"acc,none": 0.75}},
               "n-samples": {"mmlu_anatomy": {"original": 8, "effective": 4}, "mmlu_virology": {"effective": 4}}}
    s = summarize(mmlu, results, model="m", adapter="a", limit=4, fewshot=None, seconds=1.0)
    assert (s["score"], s["metric"], s["samples"]) == (0.5, "acc", 8)
    assert s["metrics"] == {"acc,none": 0.5} and set(s["subtasks"]) == {"mmlu_anatomy", "mmlu_virology"}
    del results["results"]["mmlu"]
    assert summarize(mmlu, results, model="m", adapter=None, limit=4, fewshot=None, seconds=1.0)["score"] == 0.5
    gsm = summarize(resolve_tasks(["gsm8k"])[0], {"results": {"gsm8k": {"exact_match,strict-match": 0.125,
                                                                       "exact_match,flexible-extract": 0.25}}},
                    model="m", adapter=None, limit=None, fewshot=5, seconds=1.0)
    assert (gsm["score"], gsm["metric"]) == (0.125, "exact_match")
