"""Known failures in job logs map to a hint."""

import pytest

from hpcft.diagnose import diagnose_files, diagnose_lines


@pytest.mark.parametrize("line,needle", [
    ("ImportError: cannot import name 'AdamW' from 'transformers' (/x/__init__.py)", "torch.optim"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "gradient_accumulation"),
    ("ConnectionError: Couldn't reach 'glue' on the Hub (OfflineModeIsEnabled)", "hpcft stage"),
    ("ModuleNotFoundError: No module named 'tbe'", "cann_set_env"),
    ("ModuleNotFoundError: No module named 'torch_npu'", "hpcft[npu]"),
    ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1)", "--rank"),
    ("RuntimeError: The server socket has failed to listen on any local network address. "
     "port: 29500, useIPv6: 0, code: -98, name: EADDRINUSE, message: address already in use / Address already in use",
     "MASTER_PORT"),
    ("/var/spool/slurmd/job01/slurm_script: line 3: module: command not found", "env.modules"),
    ("slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***", "resources.time"),
])
def test_known_failures(line, needle):
    hint = diagnose_lines(["some output", line, "more output"])
    assert hint and needle in hint


def test_no_false_alarm(tmp_path):
    log = tmp_path / "job.1.out"
    log.write_text("epoch 1 loss 0.5\ntraining finished\n")
    assert diagnose_files([log, tmp_path / "missing.err"]) is None
