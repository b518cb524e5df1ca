"""The pre-flight rules, in the order ``hpcft check`` prints their lines. A new rule is one
function ``rule(p: Preflight) -> Iterator[Check]`` (yielding nothing when it does not apply)
and one line here."""

from __future__ import annotations

from typing import Callable, Iterator

from . import checks
from .checks import Check, Preflight
from .grpo import grpo
from .memcheck import host_memory, memory
from .preference import preference
from .quantization import qlora
from .remote_code import remote_code
from .requirements import environment
from .sft_data import sft_data
from .trackers import trackers

Rule = Callable[[Preflight], Iterator[Check]]

RULES: list[Rule] = [
    checks.local_executor,   # executor: local runs one node
    checks.partition,        # the Slurm rules: they need the live cluster and the job's partition
    checks.device,
    checks.nodes,
    checks.gres,
    checks.cpus,
    checks.time_limit,
    checks.account,
    checks.qos,
    checks.torch_npu,        # the job's own environment and files
    environment,             # its Python asked once: the torch build for the device, what the task needs
    qlora,                   # method: qlora: not on NPUs, bitsandbytes there, a model not quantized already
    checks.output_dir,
    checks.scow_job_dir,     # SCOW: where the portal reads scow.job_dir otherwise than it looks
    trackers,
    memory,
    host_memory,
    preference,              # init_from resolved to a run folder; preference rows
    grpo,                    # task: grpo: init_from, TRL's batch rule, the reward files (sha256), vllm, rows
    sft_data,                # causal-lm: the first rows of each local data file
    remote_code,             # a model that ships *.py runs only with train.trust_remote_code
    checks.array_size,       # a sweep's job array
    checks.job_count,
    checks.submit_limit,
    checks.eval_data,        # train.eval_tasks: the benchmark data staged
    checks.assets_staged,    # last: its fix is a command to run
]


def run(p: Preflight, rules: list[Rule] = RULES) -> list[Check]:
    """Every rule's checks for one job (or one sweep), passing or not, in rule order."""
    return [check for rule in rules for check in rule(p)]
