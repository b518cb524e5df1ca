"""Everything hpcft asks Slurm. Commands are thin wrappers; parsers are pure
functions tested on captured output (tests/test_slurm_parsers.py).

submitit's own status polling needs accounting (sacct) and hangs on jobs that
die in their setup lines when there is none, so hpcft reads state itself:
``scontrol show job`` while the controller remembers the job, ``sacct`` when
accounting is on, and the run folder as a last resort.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from ..core.errors import SlurmError
from ..core.slurm_time import parse_slurm_elapsed
from ..core.slurmfmt import expand_hostlist

TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
}
_TIMEOUT = float(os.environ.get("HPCFT_SLURM_TIMEOUT", "30"))


# --------------------------------------------------------------------------- parsers

def parse_key_values(line: str) -> dict[str, str]:
    """``scontrol -o`` output: ``Key=Value Key2=Value two ...`` -> dict.
    A value runs until the next `` Key=`` (values may contain spaces)."""
    out: dict[str, str] = {}
    for m in re.finditer(r"(?:^|\s)([A-Za-z][\w:/.]*)=(.*?)(?=\s+[A-Za-z][\w:/.]*=|\s*$)", line.strip()):
        out[m.group(1)] = m.group(2)
    return out


def parse_gres_types(text: str) -> dict[str, list[str]]:
    """``gpu:a100:4(S:0),gpu:v100:2`` -> {'gpu': ['a100', 'v100']} (untyped gres: no entry)."""
    out: dict[str, list[str]] = {}
    if not text or text in ("(null)", "N/A"):
        return out
    for item in re.split(r",(?![^(]*\))", text):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if len(parts) >= 3 or (len(parts) == 2 and not parts[1].isdigit()):
            out.setdefault(parts[0], []).append(parts[1])
    return out


def parse_gres(text: str) -> dict[str, int]:
    """``gpu:2,npu:2(S:0-1)`` or ``gpu:a100:4(S:0),gpu:v100:2`` -> {'gpu': 6, 'npu': 2}."""
    out: dict[str, int] = {}
    if not text or text in ("(null)", "N/A"):
        return out
    for item in re.split(r",(?![^(]*\))", text):
        item = re.sub(r"\(.*?\)", "", item).strip()
        if not item:
            continue
        parts = item.split(":")
        name = parts[0]
        count = 1
        if len(parts) > 1 and parts[-1].isdigit():
            count = int(parts[-1])
        out[name] = out.get(name, 0) + count
    return out


def read_job_id(sbatch_output: str) -> str:
    m = re.search(r"Submitted batch job (\d+)", sbatch_output) or re.search(r"^(\d+)(?:;\S+)?\s*$", sbatch_output.strip())
    if not m:
        raise SlurmError(f"could not read a job id from sbatch output: {sbatch_output.strip()!r}")
    return m.group(1)


@dataclass
class Partition:
    name: str
    nodes: list[str]
    max_time_s: Optional[int]  # None: unlimited
    default: bool
    state: str
    total_nodes: int = 0


def parse_partitions(text: str) -> dict[str, Partition]:
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        kv = parse_key_values(line)
        if "PartitionName" not in kv:
            continue
        nodes = expand_hostlist(kv.get("Nodes", "")) if kv.get("Nodes", "(null)") != "(null)" else []
        parts[kv["PartitionName"]] = Partition(
            name=kv["PartitionName"], nodes=nodes, max_time_s=parse_slurm_elapsed(kv.get("MaxTime", "")),
            default=kv.get("Default", "NO") == "YES", state=kv.get("State", "UP"),
            total_nodes=int(kv.get("TotalNodes", len(nodes)) or 0))
    return parts


@dataclass
class Node:
    name: str
    state: str
    cpus: int
    memory_mb: int
    gres: dict[str, int]
    partitions: list[str]
    gres_types: dict[str, list[str]] = field(default_factory=dict)  # {'gpu': ['a100']} from gpu:a100:4
    features: list[str] = field(default_factory=list)              # AvailableFeatures


def parse_nodes(text: str) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        kv = parse_key_values(line)
        if "NodeName" not in kv:
            continue
        nodes[kv["NodeName"]] = Node(
            name=kv["NodeName"], state=kv.get("State", "UNKNOWN"), cpus=int(kv.get("CPUTot", "0") or 0),
            memory_mb=int(kv.get("RealMemory", "0") or 0), gres=parse_gres(kv.get("Gres", "")),
            partitions=[p for p in kv.get("Partitions", "").split(",") if p],
            gres_types=parse_gres_types(kv.get("Gres", "")),
            features=[f for f in kv.get("AvailableFeatures", "").split(",") if f and f != "(null)"])
    return nodes


@dataclass
class JobInfo:
    job_id: str
    state: str
    reason: str = ""
    elapsed_s: Optional[int] = None
    time_limit_s: Optional[int] = None
    nodes: str = ""
    restarts: int = 0
    exit_code: str = ""
    source: str = ""  # scontrol | sacct | squeue | run
    extra: dict = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def parse_scontrol_job(text: str) -> Optional[JobInfo]:
    line = " ".join(text.split("\n")) if "\n" in text.strip() else text
    kv = parse_key_values(line)
    if "JobId" not in kv:
        return None
    state = kv.get("JobState", "UNKNOWN").split()[0]
    nodes = kv.get("NodeList", "")
    return JobInfo(job_id=kv["JobId"], state=state, reason=kv.get("Reason", ""),
                   elapsed_s=parse_slurm_elapsed(kv.get("RunTime", "")),
                   time_limit_s=parse_slurm_elapsed(kv.get("TimeLimit", "")),
                   nodes="" if nodes == "(null)" else nodes, restarts=int(kv.get("Restarts", "0") or 0),
                   exit_code=kv.get("ExitCode", ""), source="scontrol",
                   extra={k: kv[k] for k in ("StartTime", "EndTime", "Partition", "StdOut", "StdErr",
                                              "BatchHost", "Requeue", "Dependency") if k in kv})


SACCT_FIELDS = "JobID,State,ExitCode,Elapsed,NodeList,Reason,Timelimit"


def parse_sacct(text: str, job_id: str) -> Optional[JobInfo]:
    """``sacct -n -P -X -o JobID,State,ExitCode,Elapsed,NodeList,Reason,Timelimit`` output."""
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 5 or cols[0] != job_id:
            continue
        state = cols[1].split()[0] if cols[1] else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        return JobInfo(job_id=job_id, state=state, exit_code=cols[2],
                       elapsed_s=parse_slurm_elapsed(cols[3]), nodes="" if cols[4] == "None assigned" else cols[4],
                       reason=cols[5] if len(cols) > 5 and cols[5] != "None" else "",
                       time_limit_s=parse_slurm_elapsed(cols[6]) if len(cols) > 6 else None, source="sacct")
    return None


# --------------------------------------------------------------------------- commands

def _run(args: list[str], timeout: float = _TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"'{args[0]}' not found: is this a Slurm login node? (or use executor: local)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"'{' '.join(args)}' did not answer in {timeout:.0f} s: is slurmctld up?") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().replace("\n", "; ")
        raise SlurmError(f"'{' '.join(args[:3])}' failed: {msg}")
    return proc


def available() -> bool:
    """True when Slurm's client tools are installed and the controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        proc = _run(["scontrol", "ping"], timeout=10, check=False)
    except SlurmError:
        return False
    return proc.returncode == 0 and "UP" in proc.stdout


def partitions() -> dict[str, Partition]:
    return parse_partitions(_run(["scontrol", "show", "partition", "-o"]).stdout)


def nodes() -> dict[str, Node]:
    return parse_nodes(_run(["scontrol", "show", "node", "-o"]).stdout)


def accounting_enabled() -> bool:
    out = _run(["scontrol", "show", "config"], check=False).stdout
    m = re.search(r"^AccountingStorageType\s*=\s*(\S+)", out, re.MULTILINE)
    return bool(m) and m.group(1) != "accounting_storage/none"


def associations(user: str) -> list[dict[str, str]]:
    out = _run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}",
                "format=account,partition,qos"], check=False).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("|")
        if len(cols) >= 3:
            rows.append({"account": cols[0], "partition": cols[1], "qos": cols[2]})
    return rows


def test_only(script_path: str) -> tuple[bool, str]:
    """``sbatch --test-only``: Slurm's own verdict (account, qos, limits) without queueing."""
    proc = _run(["sbatch", "--test-only", script_path], check=False)
    text = (proc.stderr + proc.stdout).strip()
    return proc.returncode == 0, text


def job_info(job_id: str) -> Optional[JobInfo]:
    """State from the controller, then from accounting. None if neither knows the job."""
    proc = _run(["scontrol", "show", "job", "-o", job_id], check=False)
    if proc.returncode == 0:
        info = parse_scontrol_job(proc.stdout)
        if info is not None:
            return info
    try:
        if shutil.which("sacct"):
            proc = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", SACCT_FIELDS], check=False)
            if proc.returncode == 0:
                return parse_sacct(proc.stdout, job_id)
    except SlurmError:
        return None
    return None


def wait_job(job_id: str, poll_s: float = 1.0) -> Optional[JobInfo]:
    """Poll until the job has ended: its last state, or None once Slurm no longer knows it
    (the login-side ``--wait`` of predict, eval and export)."""
    import time

    while True:
        info = job_info(job_id)
        if info is None or info.terminal:
            return info
        time.sleep(poll_s)


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])


def sbatch(script_path: str) -> str:
    """Queue a rendered script as is (helper jobs such as ``hpcft predict --submit``); its job id."""
    return read_job_id(_run(["sbatch", "--parsable", script_path]).stdout)


# --------------------------------------------------------------------------- dependencies

NEVER_SATISFIED = "DependencyNeverSatisfied"


def after_ok(job_ids: list[str]) -> dict[str, str]:
    """sbatch options for a job that runs only once every job of ``job_ids`` has completed
    with exit code 0; if one of them fails, Slurm cancels it (``--kill-on-invalid-dep``) rather
    than leave it pending forever with ``DependencyNeverSatisfied``."""
    bad = [j for j in job_ids if not re.fullmatch(r"\d+(_\d+)?", str(j))]
    if bad or not job_ids:
        raise SlurmError(f"internal: not Slurm job ids: {bad or job_ids}")
    return {"dependency": "afterok:" + ":".join(str(j) for j in job_ids), "kill-on-invalid-dep": "yes"}


def parse_dependency(text: str) -> list[tuple[str, str, str]]:
    """``scontrol``'s ``Dependency=afterok:12(failed),afterany:13(unfulfilled)`` value ->
    [(type, job id, state)] (``(null)``: [])."""
    out = []
    for m in re.finditer(r"(\w+):([\d_]+)(?:\((\w+)\))?", text or ""):
        out.append((m.group(1), m.group(2), m.group(3) or ""))
    return out


def dependency_problem(info: "JobInfo") -> Optional[str]:
    """One readable line when the job can never start because a job it waits on failed, else None."""
    if info.reason != NEVER_SATISFIED:
        return None
    failed = [j for _, j, state in parse_dependency(info.extra.get("Dependency", "")) if state == "failed"]
    which = f"job {', '.join(failed)}" if failed else "a job it waits on"
    return f"{which} did not complete successfully, so this job never started ({NEVER_SATISFIED})"


# --------------------------------------------------------------------------- job arrays (sweeps)

def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` -> {key: value}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def config() -> dict[str, str]:
    return parse_config(_run(["scontrol", "show", "config"], check=False).stdout)


def parse_index_set(text: str) -> list[int]:
    """Slurm's array index set ``0-3,7,9-11:2%4`` -> [0, 1, 2, 3, 7, 9, 11]."""
    text = text.split("%")[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return out


def parse_array_states(text: str, array_id: str) -> dict[int, str]:
    """``scontrol show job -o ARRAYID`` -> {task index: state} for the tasks the controller
    still knows (a pending remainder is one line with ``ArrayTaskId=3-8%2``)."""
    states: dict[int, str] = {}
    for line in text.splitlines():
        kv = parse_key_values(line)
        if kv.get("ArrayJobId") != array_id or "ArrayTaskId" not in kv:
            continue
        state = kv.get("JobState", "UNKNOWN").split()[0]
        try:
            for index in parse_index_set(kv["ArrayTaskId"]):
                states[index] = state
        except ValueError:
            continue  # an index set this parser does not know: those tasks fall back to the run folders
    return states


def array_states(array_id: str) -> dict[int, str]:
    """Task states of a job array from one controller call ({} once Slurm has forgotten it)."""
    proc = _run(["scontrol", "show", "job", "-o", array_id], check=False)
    return parse_array_states(proc.stdout, array_id) if proc.returncode == 0 else {}


def queued_jobs(user: str) -> int:
    """Jobs of the user in the queue, array tasks counted one by one (what MaxSubmitJobs counts)."""
    proc = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i"], check=False)
    return len(proc.stdout.split()) if proc.returncode == 0 else 0


def parse_submit_limits(text: str) -> list[int]:
    """``sacctmgr -n -P show assoc ... format=maxsubmit`` / ``show qos format=maxsubmitpu``
    output -> the limits that are set."""
    return [int(v) for v in text.split() if v.strip().isdigit()]


def submit_limit(user: str) -> Optional[int]:
    """The tightest MaxSubmitJobs that applies to the user (association or QOS), when accounting
    enforces limits; None when there is none."""
    if not accounting_enabled() or shutil.which("sacctmgr") is None:
        return None
    limits: list[int] = []
    out = _run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}", "format=maxsubmit"],
               check=False).stdout
    limits += parse_submit_limits(out)
    qos = {row["qos"] for row in associations(user)}
    names = sorted({q for entry in qos for q in entry.split(",") if q})
    if names:
        out = _run(["sacctmgr", "-n", "-P", "show", "qos", "where", f"name={','.join(names)}",
                    "format=maxsubmitpu"], check=False).stdout
        limits += parse_submit_limits(out)
    return min(limits) if limits else None


# --------------------------------------------------------------------------- placement (sbatch --test-only)

_WILL_START = re.compile(r"Job (\d+) to start at (\S+) using (\d+) processors on nodes (\S+) in partition (\S+)")


@dataclass
class StartEstimate:
    job_id: str
    start: str         # Slurm's local time, ISO-like: 2026-12-02T14:30:11
    processors: int
    nodes: str
    partition: str


def parse_test_only(text: str) -> Optional[StartEstimate]:
    """``sbatch --test-only`` (stderr): ``sbatch: Job 7 to start at 2026-12-02T14:30:11 using 1
    processors on nodes vm in partition v100`` -> StartEstimate; None when it says no such thing."""
    m = _WILL_START.search(text)
    if not m:
        return None
    return StartEstimate(m.group(1), m.group(2), int(m.group(3)), m.group(4), m.group(5))


def test_only_start(options: list[str]) -> tuple[Optional[StartEstimate], str]:
    """When would a job with these sbatch options start? (estimate, Slurm's words); nothing is queued."""
    proc = _run(["sbatch", "--test-only", *options, "--wrap", "true"], check=False)
    text = (proc.stderr + proc.stdout).strip()
    return (parse_test_only(text) if proc.returncode == 0 else None), text
