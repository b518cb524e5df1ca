"""How the suite runs in parallel under pytest-xdist (``-n N --dist loadgroup``).

A 2-core machine cannot compute faster by running tests side by side; it can stop *waiting*
one after another. Most of a Slurm test's wall time is the pytest process waiting on the
scheduler while the job computes under slurmd, so the Slurm modules run side by side, and
the in-process tests, which compute in pytest itself, run one after another:

- **one group per module that touches Slurm** (a test marked ``slurm``): a module's tests
  stay on one worker, in order, so its module-scoped fixtures (a trained run, a private
  cluster on its own ports, the 2-node cluster that one test takes a node of) are made once
  and no two tests of it race each other;
- **one group, ``unit``, for every module that does not**: the CPU-bound tier runs serially
  on one worker, so it never fights itself over the two cores;
- **longest first** (longest-processing-time scheduling): groups start in the order of their
  modules' summed wall time in ``tests/durations.json`` (measured, written by ``python -m
  devtools.testtime durations``), so the 2-node module starts at once instead of last; a module
  not listed there counts one second a test;
- **no prefetch**: a worker is given its next group only when it is on the last test of the
  one it has (xdist's default queues a second group behind a long one while another worker
  runs dry).

``group_of`` and ``order`` are pure, and tested in tests/test_xdist_groups.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

UNIT = "unit"
DURATIONS = Path(__file__).resolve().parents[1] / "tests" / "durations.json"


def group_of(module: str, slurm_modules: set[str]) -> str:
    """The xdist group of a test module: its own name if it touches Slurm, else ``unit``."""
    return Path(module).stem if module in slurm_modules else UNIT


def load_durations(path: Path = DURATIONS) -> dict[str, float]:
    """{test module path: wall seconds} as last measured (empty when the file is missing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.get("modules", {}).items()}


def order(module_groups: Mapping[str, str], counts: Mapping[str, int],
          durations: Mapping[str, float]) -> list[str]:
    """Groups longest first. A group costs its modules' measured wall seconds; a module with no
    measurement costs one second a test (``counts``: tests per module). Ties keep their order."""
    cost: dict[str, float] = {}
    for module, group in module_groups.items():
        cost[group] = cost.get(group, 0.0) + durations.get(module, float(counts.get(module, 0)))
    return sorted(cost, key=lambda g: -cost[g])


def make_scheduler(config, log):
    """xdist's loadgroup scheduler, with no prefetch behind a long group."""
    from xdist.scheduler.loadgroup import LoadGroupScheduling

    class LongestFirst(LoadGroupScheduling):
        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:   # xdist: > 2
                return
            self._assign_work_unit(node)

    config.option.loadscopereorder = False   # our order, not xdist's (most tests first)
    return LongestFirst(config, log)
