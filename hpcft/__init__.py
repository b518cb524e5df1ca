"""hpcft: reliable, offline fine-tuning on Slurm clusters.

This package must stay light to import: the CLI runs on login nodes, and
``hpcft --help`` is expected to answer in well under a second. Heavy
libraries (torch, transformers, datasets, evaluate, deepspeed) are imported
only inside :mod:`hpcft.worker`, on the compute node.
"""

__version__ = "0.1.0"
