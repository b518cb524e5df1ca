"""A test fault for tests/test_llamafactory_engine_slurm.py, on the job's PYTHONPATH (after hpcft's
offline shim, which chains to it): in LLaMA-Factory's rank processes of the first run
(``SLURM_RESTART_COUNT`` 0), the Trainer stops before its step ``HPCFT_TEST_LF_PAUSE`` + 1, rank 0
writes ``HPCFT_TEST_LF_MARKER``, and every rank then waits (at most 300 s) until the test's
time-limit stop reached it (``hpcft_lf_stop.requested()``: the signal, or the worker's stop file);
that step then runs, and the ranks save their checkpoint at its end and stop. Stdlib only; hooks ``transformers.trainer`` when it is imported. It chains on to
the next ``sitecustomize`` on sys.path (devtools/faults, where a test puts it after this folder)."""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time

_AT = int(os.environ.get("HPCFT_TEST_LF_PAUSE") or 0)
_MARKER = os.environ.get("HPCFT_TEST_LF_MARKER", "")


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
                    print(f"[test fault] paused at step {_AT} until the time-limit signal", flush=True)
                    import hpcft_lf_stop  # the engine room's child folder: what the ranks' own stop reads

                    deadline = time.monotonic() + 300
                    while not hpcft_lf_stop.requested() and time.monotonic() < deadline:
                        time.sleep(0.1)
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
