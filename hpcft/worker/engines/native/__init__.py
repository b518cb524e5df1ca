"""hpcft's own engine: the built-in tasks (``train.task``) on the HF Trainer, TRL and PEFT."""
