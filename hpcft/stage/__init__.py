"""Staging: fetch models, datasets and metrics on the login node into the shared cache.

:mod:`hpcft.core.store` is the contract every other part relies on (the worker,
``submit``'s asset check): where a staged asset lives and what its manifest says.
"""
