"""A minimal user script: prints its arguments and the environment hpcft prepared."""

import os
import sys

print("hello from", os.environ.get("SLURM_JOB_ID", "a local run"), "args:", sys.argv[1:])
for key in ("HF_HUB_OFFLINE", "HF_HOME", "HPCFT_OUTPUT_DIR", "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
    print(f"  {key}={os.environ.get(key)}")
