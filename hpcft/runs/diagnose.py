"""Known failures, recognised in a job's log (and its Slurm state), with what to do about them.

Users meet these hours after submitting; a one-line cause and fix saves them the search.
The table is data: (regex, hint). The first entry that matches a line of the log tail wins;
a hint may name what the log names (``{0}``: the regex's first group). Each entry is tested
end to end from its real error in tests/test_hints_slurm.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Iterable, Optional

NODE_FAIL = ("a node of the job failed (Slurm NODE_FAIL): not your code; resubmit (train jobs resume from their "
             "last checkpoint), and tell the admins if the same node fails again")
_MISSING_ASSET = ("an asset is not in the hpcft cache and the compute node is offline: on the login node run "
                  "`{0}`, then resubmit")

KNOWN: list[tuple[str, str]] = [
    (r"cannot import name 'AdamW' from 'transformers'",
     "transformers 5 removed AdamW: use `from torch.optim import AdamW` in your script"),
    (r"CUDA out of memory|torch\.OutOfMemoryError|NPU out of memory",
     "out of device memory: lower train.batch_size and raise train.gradient_accumulation (same effective "
     "batch), lower train.max_seq_length, or set train.precision: bf16"),
    (r"Couldn't reach '([^']+)' on the Hub \(OfflineModeIsEnabled\)", _MISSING_ASSET),
    (r"OfflineModeIsEnabled|We couldn't connect to 'https?://|LocalEntryNotFoundError: Cannot find the requested "
     r"files in the disk cache",
     "a library tried the network on the compute node: an asset your script loads is not staged; on the login "
     "node run `hpcft stage NAME` (the name your script loads) and list it under assets: so submit checks it"),
    (r"Couldn't find a module script at|Couldn't find a module script",
     "evaluate metric not cached: stage it on the login node, e.g. hpcft stage --metric glue"),
    (r"Watchdog caught collective operation timeout|NCCL.*(?:timeout|Timeout|timed out)",
     "NCCL collective timed out: one rank died, hung or is still busy (e.g. rank 0 tokenizing a large dataset "
     "alone); check every rank's log (hpcft logs RUN --rank N); preprocess before training or raise the "
     "timeout (ddp_timeout)"),
    (r"NCCL error in:|ncclSystemError|ncclInternalError|ncclRemoteError|ncclUnhandledCudaError",
     "NCCL could not connect the ranks: set NCCL_SOCKET_IFNAME to the cluster's network interface (env.vars), "
     "NCCL_IB_DISABLE=1 on nodes without InfiniBand, and NCCL_DEBUG=INFO to see which rank failed"),
    (r"EI0002|EI0006|Notify register times out|HCCL.*(?:timeout|time out|times out)",
     "HCCL timed out waiting for another rank: check every rank's log (hpcft logs RUN --rank N); stale NPU "
     "processes from an earlier job can block HCCL (npu-smi info); raise HCCL_CONNECT_TIMEOUT / "
     "HCCL_EXEC_TIMEOUT in the cluster config's hccl_env; across nodes, name the hosts' network there "
     "(HCCL_SOCKET_IFNAME, e.g. ib0)"),
    (r"HCCL function error|HcclCommInitRootInfo|HcclGetRootInfo|hccl.*error",
     "HCCL failed to initialise: stale NPU processes from an earlier job may hold the devices (npu-smi info), "
     "CANN's set_env.sh may not be sourced (cann_set_env), or the ranks see different devices "
     "(ASCEND_RT_VISIBLE_DEVICES in the log)"),
    (r"Error building extension '([^']+)'|Ninja is required to load C\+\+ extensions",
     "a DeepSpeed op ({0}) failed to compile on the node: load the compiler/CUDA modules it needs in "
     "env.modules, or avoid the build: install DeepSpeed with prebuilt ops (DS_BUILD_OPS=1 at pip time) "
     "or use train.deepspeed: false"),
    (r"hpcft: conda not found on|conda: command not found",
     "conda is not available on the node: add the module that provides it to env.modules "
     "(e.g. anaconda3; see: module avail)"),
    (r"hpcft: conda activate (.+) failed|EnvironmentNameNotFound|Could not find conda environment",
     "the job's conda environment does not exist on the node: check env.conda against `conda env list` on "
     "the login node, or create it from envs/ (conda env create -f envs/gpu.yml)"),
    (r"module: command not found",
     "environment modules are not available on this node: remove env.modules or ask the admins"),
    (r"hpcft: module load (.+) failed|Unable to locate a modulefile|The following module\(s\) are unknown",
     "an environment module in env.modules does not exist on the node: check the name with `module avail` "
     "(or `module spider NAME`) and fix env.modules"),
    (r"ModuleNotFoundError: No module named 'tbe'|No module named 'te'|set_env\.sh",
     "CANN environment missing: set cann_set_env in the cluster config to your set_env.sh"),
    (r"No module named 'torch_npu'",
     "torch_npu is not installed in the job's environment: install hpcft[npu] (see envs/npu.yml)"),
    (r"Address already in use",
     "port clash: another job on this node uses MASTER_PORT; hpcft derives it from the job id, so "
     "check that your script does not hard-code a port"),
    (r"No space left on device|ENOSPC",
     "disk full: free space in the output folder or point output_dir at a larger filesystem"),
    (r"DUE TO NODE FAILURE|Node failure on", NODE_FAIL),
    (r"slurmstepd: error: .*DUE TO TIME LIMIT|this job is timed-out|Job not requeued because: timed-out",
     "time limit reached: raise resources.time (hpcft requeues train jobs from their last checkpoint)"),
    (r"oom-kill|Out Of Memory|OOM Killed",
     "host memory exhausted: raise resources.mem or lower the batch size / dataloader workers"),
]
_COMPILED = [(re.compile(p), h) for p, h in KNOWN]

# names in the traceback's source lines: from_pretrained("x"), load_dataset("x", "cfg"), evaluate.load("x")
_LOADS = [
    ("model", re.compile(r"from_pretrained\(\s*['\"]([^'\"]+)['\"]")),
    ("dataset", re.compile(r"load_dataset\(\s*['\"]([^'\"]+)['\"](?:\s*,\s*['\"]([^'\"]+)['\"])?")),
    ("metric", re.compile(r"evaluate\.load\(\s*['\"]([^'\"]+)['\"]")),
]
NO_CHECKPOINT = ("time limit reached and no checkpoint was saved, so nothing can resume: raise resources.time "
                 "(Slurm's limit), and for a long train job set train.checkpoint_steps; a script job must save "
                 "its own state (it gets SIGTERM ~{delay} s before the limit)")


def _stage_command(lines: list[str], dataset_name: Optional[str]) -> str:
    """The ``hpcft stage`` line for what the traceback shows the script loading."""
    found: dict[str, str] = {}
    for line in lines:
        for kind, pattern in _LOADS:
            m = pattern.search(line)
            if m and kind not in found:
                found[kind] = m.group(1) + (f"/{m.group(2)}" if kind == "dataset" and m.group(2) else "")
    if dataset_name and "dataset" not in found:
        found["dataset"] = dataset_name
    parts = ["hpcft", "stage"]
    if "model" in found:
        parts.append(found["model"])
        if "dataset" in found:
            parts.append(found["dataset"])
    elif "dataset" in found:
        parts += ["--dataset", found["dataset"]]
    if "metric" in found:
        parts += ["--metric", found["metric"]]
    if len(parts) == 2:
        parts.append("NAME")
    return " ".join(shlex.quote(p) for p in parts)


def diagnose_lines(lines: Iterable[str]) -> Optional[str]:
    lines = list(lines)
    for pattern, hint in _COMPILED:
        for line in reversed(lines):
            m = pattern.search(line)
            if not m:
                continue
            if hint is _MISSING_ASSET or "hpcft stage NAME" in hint:
                command = _stage_command(lines, m.group(1) if m.groups() else None)
                if command.endswith("NAME"):
                    return hint
                return _MISSING_ASSET.format(command)
            group = next((g for g in m.groups() if g), None) if m.groups() else None
            return hint.format(group or "an op") if "{0}" in hint else hint
    return None


def read_tails(paths: Iterable[Path], tail_bytes: int = 256 * 1024) -> list[str]:
    lines: list[str] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - tail_bytes))
                lines += fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
    return lines


def diagnose_files(paths: Iterable[Path], tail_bytes: int = 256 * 1024) -> Optional[str]:
    return diagnose_lines(read_tails(paths, tail_bytes))


def diagnose_run(paths: Iterable[Path], state: str, has_checkpoint: bool, signal_delay_s: int = 120) -> Optional[str]:
    """The hint for a finished job: its logs, then what its Slurm state and run folder say
    (a node failure leaves nothing in the log; a time limit is worse without a checkpoint)."""
    hint = diagnose_files(paths)
    timed_out = state == "TIMEOUT" or (hint is not None and hint.startswith("time limit reached"))
    if timed_out and not has_checkpoint:
        return NO_CHECKPOINT.format(delay=signal_delay_s)
    if hint is None and state == "NODE_FAIL":
        return NODE_FAIL
    if hint is None and state == "TIMEOUT":
        return diagnose_lines(["slurmstepd: error: *** JOB DUE TO TIME LIMIT ***"])
    return hint
