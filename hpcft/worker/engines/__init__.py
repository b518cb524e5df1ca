"""The engines that run a job's training, one room each: ``native`` (hpcft's own tasks on the
HF Trainer), ``llamafactory`` (LLaMA-Factory's own ``llamafactory-cli train``), ``script`` (the
user's own script). A new engine (ms-swift, ...) is a new folder here; engines never import
each other (tests/test_layout.py)."""
