"""Known failures in job logs map to a hint."""

import pytest

from hpcft.runs.diagnose import diagnose_files, diagnose_lines


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


@pytest.mark.parametrize("lines,needle", [
    # Lmod on a real cluster (module exists, the name does not); the end-to-end test's node has no `module`
    (['Lmod has detected the following error:  The following module(s) are unknown: "cuda/99"',
      "hpcft: module load cuda/99 failed; check the name with: module avail"], "module spider"),
    # conda present, the env absent (conda 23+: EnvironmentNameNotFound)
    (["EnvironmentNameNotFound: Could not find conda environment: hpcft-gpu",
      "hpcft: conda activate hpcft-gpu failed"], "conda env list"),
    # a bare module command missing wins over the failed load it causes
    (["slurm_script: line 20: module: command not found", "hpcft: module load x failed; check the name"],
     "environment modules are not available"),
    (["ConnectionError: Couldn't reach 'yelp_review_full' on the Hub (OfflineModeIsEnabled)"],
     "hpcft stage --dataset yelp_review_full"),
    (["    model = AutoModel.from_pretrained('bert-base-cased', num_labels=2)",
      "OSError: We couldn't connect to 'https://huggingface.co' to load the files"], "hpcft stage bert-base-cased"),
    (["OSError: We couldn't connect to 'https://huggingface.co' to load the files"], "hpcft stage NAME"),
])
def test_hints_from_context(lines, needle):
    hint = diagnose_lines(lines)
    assert hint and needle in hint, hint


def test_state_decides_when_the_log_cannot(tmp_path):
    from hpcft.runs.diagnose import diagnose_run

    log = tmp_path / "job.1.err"
    log.write_text("working\n")
    assert "NODE_FAIL" in diagnose_run([log], "NODE_FAIL", has_checkpoint=False)
    assert "no checkpoint was saved" in diagnose_run([log], "TIMEOUT", has_checkpoint=False)
    assert diagnose_run([log], "TIMEOUT", has_checkpoint=True).startswith("time limit reached: raise")
    assert diagnose_run([log], "FAILED", has_checkpoint=False) is None
