"""Run at start-up in ``llamafactory-cli train``'s processes (torchrun and every rank), chained from
hpcft's offline shim; it chains on to the job's own ``sitecustomize`` further down ``sys.path``.

* The time-limit stop (:mod:`hpcft_lf_stop`): ``USR2`` only records the request, and once
  ``transformers.trainer`` is imported every Trainer saves a checkpoint at the end of the step in
  progress and stops, so the requeued job resumes at the step the signal arrived at.
* When ``torch.serialization`` is imported: on CPU ranks accelerate names each rank's device
  ``cpu:N``, and transformers' Trainer resumes its optimizer with ``map_location=cpu:N``, which
  torch refuses ("don't know how to restore data location ... (tagged with cpu:0)"): the requeued
  leg could not resume. Storages for ``cpu:N`` are restored on the CPU, as for ``cpu``.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys


def _cpu_ranks(serialization) -> None:
    def deserialize(obj, location):
        return obj if isinstance(location, str) and location.startswith("cpu:") else None

    serialization.register_package(9, lambda obj: None, deserialize)


class _After(importlib.abc.MetaPathFinder):
    """Calls ``fix(module)`` once ``name`` has been imported (then steps aside)."""

    def __init__(self, name, fix):
        self.name, self.fix = name, fix

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            self.fix(module)

        spec.loader.exec_module = exec_module
        return spec


def _chain() -> None:
    """The next ``sitecustomize`` on sys.path after this folder (the job's own), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    rest = sys.path[paths.index(here) + 1:] if here in paths else []
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or os.path.abspath(str(spec.origin)) == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def _after(name, fix) -> None:
    if name in sys.modules:
        fix(sys.modules[name])
    else:
        sys.meta_path.insert(0, _After(name, fix))


if __name__ == "sitecustomize":
    import hpcft_lf_stop

    hpcft_lf_stop.install()
    _after("torch.serialization", _cpu_ranks)
    _after("transformers.trainer", hpcft_lf_stop.add_callback)
    _chain()
