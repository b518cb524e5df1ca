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

How the groups reach the scheduler: xdist's own channel (a ``@group`` suffix its worker writes
into each node id) does nothing on pytest 9.2, which builds node ids from a structured id
(pytest-xdist #1386, open: every test is then scheduled on its own, silently). So the
controller names a file in ``HPCFT_XDIST_GROUPS`` before it starts the workers, worker gw0
writes {node id: group} there at collection (:func:`publish`), and the scheduler reads it
when it splits the collection into groups, which xdist does only once every worker has
collected. Without the file (a worker crashed), each test module is a group of its own.

``group_of`` and ``order`` are pure, and tested in tests/test_xdist_groups.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

UNIT = "unit"
GROUPS_ENV = "HPCFT_XDIST_GROUPS"
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


def announce() -> Path:
    """Controller side, before the workers start: the file the workers will publish groups in."""
    fd, name = tempfile.mkstemp(prefix="hpcft-xdist-groups-", suffix=".json")
    os.close(fd)
    os.environ[GROUPS_ENV] = name
    return Path(name)


def publish(groups: Mapping[str, str]) -> None:
    """Worker gw0, at collection: {node id: group}, written whole (temporary file, then rename)."""
    target = os.environ.get(GROUPS_ENV)
    if not target or os.environ.get("PYTEST_XDIST_WORKER") != "gw0":
        return
    tmp = Path(target + ".tmp")
    tmp.write_text(json.dumps(dict(groups)))
    tmp.replace(target)


def read_published(path: str | None) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def scope_of(nodeid: str, published: Mapping[str, str]) -> str:
    """The work unit of a test: its published group, else its module."""
    return published.get(nodeid) or nodeid.split("::", 1)[0]


def make_scheduler(config, log):
    """xdist's loadgroup scheduler, fed our groups, with no prefetch behind a long group."""
    from xdist.scheduler.loadgroup import LoadGroupScheduling

    class LongestFirst(LoadGroupScheduling):
        _published: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._published is None:   # first call: every worker has collected (and gw0 published)
                self._published = read_published(os.environ.get(GROUPS_ENV))
            return scope_of(nodeid, self._published)

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
