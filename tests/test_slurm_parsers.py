"""The Slurm parsers on output captured from the dev cluster (slurm-wlm 22.05)."""

import pytest

from hpcft.cluster import slurm
from hpcft.core.slurm_time import format_duration, parse_duration, parse_slurm_elapsed
from hpcft.core.slurmfmt import expand_hostlist, node_gres_idx

PARTITIONS = """\
PartitionName=cpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=FORCE:4 OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=19200M,node=1,billing=2
PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=2-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=gpu[01-03],gpu10 PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=FORCE:4 OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=4 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=19200M,node=1,billing=2
PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=(null) PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=DOWN TotalCPUs=0 TotalNodes=0 SelectTypeParameters=NONE
"""

NODE = ("NodeName=vm Arch=x86_64 CoresPerSocket=2  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.63 "
        "AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:2,npu:2 NodeAddr=127.0.0.1 NodeHostName=vm "
        "Version=22.05.8 OS=Linux 6.18.44-fc-v769 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=19200 AllocMem=0 "
        "FreeMem=22304 Sockets=1 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A "
        "MCS_label=N/A Partitions=cpu,gpu,npu  BootTime=2026-11-23T15:09:15 SlurmdStartTime=2026-11-23T15:18:00 "
        "LastBusyTime=2026-11-23T15:18:00 CfgTRES=cpu=2,mem=19200M,billing=2 AllocTRES= CapWatts=n/a")

JOB_RUNNING = (
    "JobId=4 JobName=a b UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901756 Nice=0 Account=(null) "
    "QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 RunTime=00:00:07 TimeLimit=2-00:00:00 TimeMin=N/A SubmitTime=2026-11-23T15:19:34 "
    "StartTime=2026-11-23T15:19:35 EndTime=2026-11-25T15:19:35 Partition=npu AllocNode:Sid=localhost:1098 "
    "NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 WorkDir=/work/main "
    "StdErr=/work/main/slurm-4.out StdIn=/dev/null StdOut=/work/main/slurm-4.out Power= TresPerNode=gres:npu:2 ")

JOB_FAILED = (
    "JobId=5 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901755 Nice=0 Account=(null) "
    "QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1 "
    "Reboot=0 ExitCode=3:0 RunTime=1-02:03:04 TimeLimit=1-00:00:00 TimeMin=N/A NodeList=vm BatchHost=vm")

JOB_PENDING = ("JobId=17 JobName=big JobState=PENDING Reason=Resources Dependency=(null) Requeue=1 Restarts=0 "
               "ExitCode=0:0 RunTime=00:00:00 TimeLimit=01:00:00 NodeList=(null)")

JOB_DETAIL = """\
JobId=4 JobName=a b
   JobState=RUNNING Reason=None Dependency=(null)
   NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:*
   JOB_GRES=npu:2
     Nodes=vm CPU_IDs=0 Mem=0 GRES=npu:2(IDX:0-1,3)
"""

SACCT = """\
12|COMPLETED|0:0|00:00:03|vm|None|01:00:00
13|CANCELLED by 0|0:15|00:00:10|vm|None|01:00:00
14|FAILED|1:0|00:00:01|None assigned|NonZeroExitCode|00:05:00
"""


def test_partitions():
    parts = slurm.parse_partitions(PARTITIONS)
    assert list(parts) == ["cpu", "gpu", "debug"]
    assert parts["cpu"].default and parts["cpu"].max_time_s == 86400 and parts["cpu"].nodes == ["vm"]
    assert parts["gpu"].nodes == ["gpu01", "gpu02", "gpu03", "gpu10"] and parts["gpu"].total_nodes == 4
    assert parts["debug"].max_time_s is None and parts["debug"].nodes == [] and parts["debug"].state == "DOWN"


def test_nodes():
    node = slurm.parse_nodes(NODE)["vm"]
    assert node.gres == {"gpu": 2, "npu": 2}
    assert node.cpus == 2 and node.memory_mb == 19200 and node.partitions == ["cpu", "gpu", "npu"]
    assert node.state == "IDLE"


@pytest.mark.parametrize("text,expected", [
    ("gpu:2,npu:2", {"gpu": 2, "npu": 2}),
    ("gpu:a100:4(S:0-1),gpu:v100:2(S:0)", {"gpu": 6}),
    ("gpu:tesla:8(S:0-1),mps:400", {"gpu": 8, "mps": 400}),
    ("(null)", {}),
    ("", {}),
])
def test_gres(text, expected):
    assert slurm.parse_gres(text) == expected


def test_job_running_with_spaces_in_name():
    info = slurm.parse_scontrol_job(JOB_RUNNING)
    assert info.job_id == "4" and info.state == "RUNNING" and not info.terminal
    assert info.elapsed_s == 7 and info.time_limit_s == 2 * 86400 and info.nodes == "vm"
    assert info.extra["Partition"] == "npu" and info.extra["StdOut"] == "/work/main/slurm-4.out"


def test_job_failed_and_pending():
    failed = slurm.parse_scontrol_job(JOB_FAILED)
    assert failed.state == "FAILED" and failed.terminal and failed.exit_code == "3:0"
    assert failed.restarts == 2 and failed.elapsed_s == 86400 + 2 * 3600 + 3 * 60 + 4
    pending = slurm.parse_scontrol_job(JOB_PENDING)
    assert pending.state == "PENDING" and pending.reason == "Resources" and pending.nodes == ""


def test_multiline_job_and_npu_idx():
    info = slurm.parse_scontrol_job(JOB_DETAIL)
    assert info.state == "RUNNING" and info.job_id == "4"
    assert node_gres_idx(JOB_DETAIL) == [0, 1, 3]
    assert node_gres_idx("no gres here") is None


def test_sacct():
    assert slurm.parse_sacct(SACCT, "12").state == "COMPLETED"
    cancelled = slurm.parse_sacct(SACCT, "13")
    assert cancelled.state == "CANCELLED" and cancelled.elapsed_s == 10
    failed = slurm.parse_sacct(SACCT, "14")
    assert failed.state == "FAILED" and failed.nodes == "" and failed.reason == "NonZeroExitCode"
    assert slurm.parse_sacct(SACCT, "99") is None


def test_read_job_id():
    assert slurm.read_job_id("Submitted batch job 123\n") == "123"
    assert slurm.read_job_id("456;cluster\n") == "456"
    with pytest.raises(slurm.SlurmError):
        slurm.read_job_id("sbatch: error: Batch job submission failed")


def test_hostlist():
    assert expand_hostlist("node[1-3,5],gpu01") == ["node1", "node2", "node3", "node5", "gpu01"]
    assert expand_hostlist("cn[008-010]") == ["cn008", "cn009", "cn010"]
    assert expand_hostlist("vm") == ["vm"]


@pytest.mark.parametrize("text,seconds", [
    ("90", 5400), ("5:30", 330), ("01:00:00", 3600), ("1-12", 129600), ("1-00:30", 86400 + 1800),
    ("2-01:02:03", 2 * 86400 + 3723), ("2h", 7200), ("30m", 1800), ("1d", 86400), ("45s", 45),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "-5", "0", "00:00:00", "1-xx", ""])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_elapsed_and_format():
    assert parse_slurm_elapsed("UNLIMITED") is None
    assert parse_slurm_elapsed("12:34") == 754
    assert format_duration(90061) == "1-01:01:01" and format_duration(61) == "00:01:01"
