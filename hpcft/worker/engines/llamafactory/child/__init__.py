"""A folder put on the PYTHONPATH of ``llamafactory-cli train`` and its ranks (after hpcft's offline
shim, which chains to it): :mod:`sitecustomize` here fixes, inside LLaMA-Factory's processes, what
hpcft fixes in its own worker. Stdlib only until the module it patches is imported."""
