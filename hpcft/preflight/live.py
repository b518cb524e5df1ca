"""The live cluster as the pre-flight sees it: :class:`ClusterView`, one snapshot of the
partitions and nodes, and :class:`LiveCluster`, the Slurm calls a submit starts at once."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..cluster import slurm

if TYPE_CHECKING:
    from ..core.config import Settings


class Background:
    """A call running in a thread from now on (a Slurm command waits on the controller);
    :meth:`result` waits for it and returns its value or raises its error, in the caller's thread."""

    def __init__(self, call: Callable[[], Any]):
        self._call, self._value, self._error = call, None, None
        self._thread = threading.Thread(target=self._run, daemon=True)  # never holds up exit
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # raised again by result(), where the caller can handle it
            self._error = exc

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class ClusterView:
    """A snapshot of the cluster's partitions and nodes."""

    partitions: dict[str, slurm.Partition]
    nodes: dict[str, slurm.Node]

    @classmethod
    def live(cls) -> "ClusterView":
        """Asked now: one scontrol call each, side by side."""
        return LiveCluster(ping=False).view()

    def default_partition(self) -> Optional[str]:
        for p in self.partitions.values():
            if p.default:
                return p.name
        return None

    def kind(self, partition: str, settings: Settings) -> str:
        """gpu/npu/cpu: the cluster config's lists first, then the partition's name, then the
        gres its nodes offer (npu > gpu > cpu)."""
        for kind in ("npu", "gpu", "cpu"):
            if partition in getattr(settings.partitions, kind):
                return kind
        lowered = partition.lower()
        for kind, words in (("npu", ("npu", "ascend", "910")), ("gpu", ("gpu", "cuda", "a100", "h100", "v100")),
                            ("cpu", ("cpu",))):
            if any(w in lowered for w in words):
                return kind
        gres: set[str] = set()
        for n in self.partitions[partition].nodes:
            if n in self.nodes:
                gres |= set(self.nodes[n].gres)
        return "npu" if "npu" in gres else "gpu" if "gpu" in gres else "cpu"

    def has_device(self, partition: str, device: str) -> bool:
        return any(self.nodes[n].gres.get(device) for n in self.partitions[partition].nodes if n in self.nodes)


class LiveCluster:
    """What ``submit`` and ``check`` ask Slurm first: does the controller answer (a job whose
    executor is auto), and the partitions and nodes. The calls start at once, when this is
    made, and wait on the controller side by side; an answer nobody asks for is dropped.

    Made once the job file is read: started earlier, while Python imports and validates, the
    threads and the scontrol processes slowed the imports more than the overlap saved (measured
    on a 2-CPU login node, benchmarks/bench_cli.py)."""

    def __init__(self, ping: bool = True):
        self._available = Background(slurm.available) if ping else None
        self._partitions = Background(slurm.partitions)
        self._nodes = Background(slurm.nodes)

    def available(self) -> bool:
        return self._available.result() if self._available else slurm.available()

    def view(self) -> ClusterView:
        return ClusterView(self._partitions.result(), self._nodes.result())
