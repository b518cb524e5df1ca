"""Shared by both sides (login node and compute node); imports only ``hpcft.core`` and the stdlib-only
offline shim: errors, atomic writes, YAML and config loading, the job schema, the run-folder
contract, the cache store and its trust rules, name resolution, Slurm text formats."""
