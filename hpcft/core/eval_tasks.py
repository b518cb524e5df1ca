"""Benchmark tasks hpcft evaluates with lm-evaluation-harness, and the hub datasets each loads.

Shared by both sides: the login side stages and checks exactly these datasets (``hpcft stage
--eval``, ``hpcft eval``, ``train.eval_tasks`` at submit), the worker hands the harness names to
lm-eval. The repos, configs and splits are those of lm-evaluation-harness 0.4.13's task files
(``lm_eval/tasks/<task>/*.yaml``: ``dataset_path``, ``dataset_name``, the ``*_split`` keys);
``tests/test_eval_tasks.py`` reads the installed harness's files and checks this table against them.

A name is a benchmark (``ceval``, ``cmmlu``, ``mmlu``, ``gsm8k``: the harness's group, every
subject), the harness's group name (``ceval-valid``) or one subject (``mmlu_anatomy``,
``ceval-valid_accountant``, ``cmmlu_agronomy``).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

EVAL_DIR = "eval"  # in a run folder: <task>.json per task, harness/ the harness's own results
# the oldest lm-eval whose task files load the datasets of this table (0.4.8-0.4.9 load a bare
# ``gsm8k`` and ``hails/mmlu_no_train``, which ``hpcft stage --eval`` does not stage): pre-flight
# and the worker refuse an older one
LM_EVAL_FLOOR = (0, 4, 10)


# ModelScope's own copies of the benchmarks (modelscope/mmlu, modelscope/cmmlu, modelscope/ceval-exam,
# modelscope/gsm8k) are loading scripts over archives, with other split names and columns: ``hpcft stage
# --eval ... --source modelscope`` converts them into the repos of this table (hpcft/stage/eval_convert.py
# names the layouts and where they were read).


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.4.10"`` -> ``(0, 4, 10)``; ``"0.4.9.post1"`` and ``"0.4.10rc1"`` count by their leading numbers."""
    out = []
    for part in str(text).split(".")[:3]:
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group(0)))
    return tuple(out)


def floor_text() -> str:
    return ".".join(map(str, LM_EVAL_FLOOR))


CEVAL = """
accountant advanced_mathematics art_studies basic_medicine business_administration
chinese_language_and_literature civil_servant clinical_medicine college_chemistry college_economics
college_physics college_programming computer_architecture computer_network discrete_mathematics
education_science electrical_engineer environmental_impact_assessment_engineer fire_engineer
high_school_biology high_school_chemistry high_school_chinese high_school_geography high_school_history
high_school_mathematics high_school_physics high_school_politics ideological_and_moral_cultivation law
legal_professional logic mao_zedong_thought marxism metrology_engineer middle_school_biology
middle_school_chemistry middle_school_geography middle_school_history middle_school_mathematics
middle_school_physics middle_school_politics modern_chinese_history operating_system physician
plant_protection probability_and_statistics professional_tour_guide sports_science tax_accountant
teacher_qualification urban_and_rural_planner veterinary_medicine
""".split()
CMMLU = """
agronomy anatomy ancient_chinese arts astronomy business_ethics chinese_civil_service_exam
chinese_driving_rule chinese_food_culture chinese_foreign_policy chinese_history chinese_literature
chinese_teacher_qualification clinical_knowledge college_actuarial_science college_education
college_engineering_hydrology college_law college_mathematics college_medical_statistics college_medicine
computer_science computer_security conceptual_physics construction_project_management economics education
electrical_engineering elementary_chinese elementary_commonsense elementary_information_and_technology
elementary_mathematics ethnology food_science genetics global_facts high_school_biology high_school_chemistry
high_school_geography high_school_mathematics high_school_physics high_school_politics human_sexuality
international_law journalism jurisprudence legal_and_moral_basis logical machine_learning management marketing
marxist_theory modern_chinese nutrition philosophy professional_accounting professional_law
professional_medicine professional_psychology public_relations security_study sociology sports_science
traditional_chinese_medicine virology world_history world_religions
""".split()
MMLU = """
abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry
college_computer_science college_mathematics college_medicine college_physics computer_security
conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts
high_school_biology high_school_chemistry high_school_computer_science high_school_european_history
high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics
high_school_microeconomics high_school_physics high_school_psychology high_school_statistics
high_school_us_history high_school_world_history human_aging human_sexuality international_law jurisprudence
logical_fallacies machine_learning management marketing medical_genetics miscellaneous moral_disputes
moral_scenarios nutrition philosophy prehistory professional_accounting professional_law professional_medicine
professional_psychology public_relations security_studies sociology us_foreign_policy virology world_religions
""".split()


@dataclass(frozen=True)
class Benchmark:
    name: str                   # what users type: ceval
    group: str                  # the harness's group (or task) name: ceval-valid
    repo: str                   # the hub dataset the harness loads (dataset_path)
    subjects: tuple[str, ...]   # its configs (dataset_name), one harness subtask each
    subtask: str                # the harness's subtask name for a subject: ceval-valid_{}
    splits: tuple[str, ...]     # the splits the harness reads (evaluation, then few-shot)
    metric: str                 # the headline entry of the harness's results: acc,none
    generative: bool = False    # scored on generated text (gsm8k), not on the choices' log-likelihoods


BENCHMARKS = {b.name: b for b in (
    Benchmark("ceval", "ceval-valid", "ceval/ceval-exam", tuple(CEVAL), "ceval-valid_{}", ("val", "dev"), "acc,none"),
    Benchmark("cmmlu", "cmmlu", "haonan-li/cmmlu", tuple(CMMLU), "cmmlu_{}", ("test", "dev"), "acc,none"),
    Benchmark("mmlu", "mmlu", "cais/mmlu", tuple(MMLU), "mmlu_{}", ("test", "dev"), "acc,none"),
    Benchmark("gsm8k", "gsm8k", "openai/gsm8k", ("main",), "", ("test", "train"), "exact_match,strict-match",
              generative=True),
)}


@dataclass(frozen=True)
class EvalTask:
    """One task as the user named it: what the harness runs and which datasets it loads."""

    name: str                   # as typed (canonical form): mmlu, mmlu_anatomy, gsm8k
    benchmark: Benchmark
    harness: str                # the harness task or group to run
    configs: tuple[str, ...]    # the dataset configs it loads

    @property
    def repo(self) -> str:
        return self.benchmark.repo

    @property
    def metric(self) -> str:
        return self.benchmark.metric

    @property
    def datasets(self) -> list[str]:
        """``repo:config`` for each dataset config, as ``hpcft stage`` takes them."""
        return [f"{self.repo}:{c}" for c in self.configs]


def _table() -> dict[str, EvalTask]:
    out: dict[str, EvalTask] = {}
    for b in BENCHMARKS.values():
        whole = EvalTask(b.name, b, b.group, b.subjects)
        out[b.name] = whole
        out[b.group] = whole
        if b.subtask:
            for s in b.subjects:
                name = b.subtask.format(s)
                out[name] = EvalTask(name, b, name, (s,))
    return out


TASKS = _table()


def split_names(values) -> list[str]:
    """``["ceval,cmmlu", "mmlu"]`` -> ``["ceval", "cmmlu", "mmlu"]`` (order kept, repeats dropped)."""
    out: list[str] = []
    for v in values:
        for n in str(v).split(","):
            n = n.strip()
            if n and n not in out:
                out.append(n)
    return out


def problem(name: str) -> str | None:
    """One line for an unknown task name, with the nearest known names; None when known."""
    if name in TASKS:
        return None
    near = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(BENCHMARKS)} (or one subject, e.g. mmlu_anatomy)"
    return f"unknown eval task {name!r}{hint}"


def resolve_tasks(values, where: str = "--tasks") -> list[EvalTask]:
    """The tasks named (comma lists allowed); every unknown name reported at once, one line each."""
    names = split_names(values)
    if not names:
        raise ConfigError([f"{where}: name at least one task ({', '.join(BENCHMARKS)})"])
    bad = [f"{where}: {p}" for p in (problem(n) for n in names) if p]
    if bad:
        raise ConfigError(bad)
    tasks: list[EvalTask] = []
    for n in names:
        t = TASKS[n]
        if t not in tasks:
            tasks.append(t)
    return tasks


def read_scores(run_dir) -> dict[str, dict]:
    """A run's ``eval/<task>.json`` files, by task name (what show and compare print)."""
    folder = Path(run_dir) / EVAL_DIR
    out: dict[str, dict] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("task"), str):
            out[data["task"]] = data
    return out
