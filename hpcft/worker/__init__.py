"""The training worker: runs on the compute node, imports torch/transformers lazily."""
