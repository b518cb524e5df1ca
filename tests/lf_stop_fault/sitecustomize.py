"""A test fault for tests/test_llamafactory_multinode.py, on the job's PYTHONPATH (after hpcft's
offline shim and the LLaMA-Factory room's child folder, which chain to it): in LLaMA-Factory's rank
processes of the first leg (``SLURM_RESTART_COUNT`` 0), the step after ``HPCFT_TEST_LF_PAUSE``
waits at its start until the time-limit stop reached this rank (``hpcft_lf_stop.requested()``: the
signal itself, or the worker's stop file), at most 300 s; rank 0 writes ``HPCFT_TEST_LF_MARKER``
first. So the signal arrives in that step, whatever the machine's speed. Stdlib only; hooks
``transformers.trainer`` when it is imported. It chains on to the next ``sitecustomize`` on
sys.path (devtools/faults, where tests/test_llamafactory_engine_slurm.py puts it after this folder)."""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time

_AT = int(os.environ.get("HPCFT_TEST_LF_PAUSE") or 0)
_MARKER = os.environ.get("HPCFT_TEST_LF_MARKER", "")


def _wait_for_stop(step: int) -> None:
    import hpcft_lf_stop  # the child folder's: what the ranks' own stop reads

    print(f"[test fault] step {step + 1} waits for the time-limit signal", flush=True)
    deadline = time.monotonic() + 300
    while not hpcft_lf_stop.requested() and time.monotonic() < deadline:
        time.sleep(0.1)


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            step = module.Trainer.training_step

            def training_step(self, *args, **kwargs):
                if self.state.global_step == _AT and not getattr(self, "_hpcft_test_waited", False):
                    self._hpcft_test_waited = True   # once: gradient accumulation calls it per micro-batch
                    if self.args.process_index == 0 and _MARKER:
                        with open(_MARKER, "w") as fh:
                            fh.write(f"{_AT}\n")
                    _wait_for_stop(_AT)
                return step(self, *args, **kwargs)

            module.Trainer.training_step = training_step

        spec.loader.exec_module = exec_module
        return spec


if _AT and "LOCAL_RANK" in os.environ and os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
    sys.meta_path.insert(0, _Hook())


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    rest = sys.path[paths.index(here) + 1:] if here in paths else []
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or os.path.abspath(str(spec.origin)) == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    _chain()
