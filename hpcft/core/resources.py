"""A job's ``resources:`` (what it asks Slurm for) and ``env:`` (the environment it runs in), and
the strict base every block of the job schema shares (:mod:`hpcft.core.job`)."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .slurm_time import parse_duration

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SBATCH_ARG = re.compile(r"^--[A-Za-z][A-Za-z0-9-]*(=.*)?$")
_MEM = re.compile(r"^[0-9]+[KMGT]?$", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_line(value: Optional[str]) -> Optional[str]:
    if value is not None and _CONTROL.search(value):
        raise ValueError("must be a single line without control characters")
    return value


class Resources(_Strict):
    partition: Optional[str] = None
    nodes: int = Field(1, ge=1)
    # "auto" (partition, gpus_per_node, npus_per_node; train.deepspeed): hpcft.preflight.placement chooses
    gpus_per_node: Union[int, Literal["auto"], None] = None
    npus_per_node: Union[int, Literal["auto"], None] = None
    cpus_per_task: Optional[int] = Field(None, ge=1)
    mem: Optional[str] = None
    time: str = "01:00:00"
    account: Optional[str] = None
    qos: Optional[str] = None
    exclusive: bool = False
    constraint: Optional[str] = None
    sbatch: list[str] = []  # extra sbatch options, e.g. ["--mail-type=END"]

    _single = field_validator("partition", "account", "qos", "constraint", "mem")(_one_line)

    @field_validator("gpus_per_node", "npus_per_node", mode="before")
    @classmethod
    def _per_node(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v is None or v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"expected a number of devices (1 or more) or auto, got {v!r}")
        return v

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _MEM.match(str(v)):
            raise ValueError("expected a size such as 16G, 4000M or 32000 (MB)")
        return v

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("expected a Slurm time such as 90, 02:00:00, 1-12:00:00, 2h or 30m")
        parse_duration(str(v))  # raises ValueError with a readable message
        return str(v)

    @field_validator("sbatch")
    @classmethod
    def _sbatch(cls, v: list[str]) -> list[str]:
        for item in v:
            _one_line(item)
            if not _SBATCH_ARG.match(item):
                raise ValueError(f"{item!r}: each entry is one long option such as --mail-type=END")
        return v

    @model_validator(mode="after")
    def _devices(self) -> "Resources":
        if self.gpus_per_node and self.npus_per_node:
            raise ValueError("gpus_per_node and npus_per_node are both set; a job uses one kind of device")
        return self

    @property
    def time_seconds(self) -> int:
        return parse_duration(self.time)

    @property
    def device(self) -> Literal["gpu", "npu", "cpu"]:
        return "gpu" if self.gpus_per_node else "npu" if self.npus_per_node else "cpu"

    @property
    def devices_per_node(self) -> int:
        n = self.gpus_per_node or self.npus_per_node or 0
        return n if isinstance(n, int) else 1  # "auto": placement sets the count before anything renders

    @property
    def auto(self) -> bool:
        """Some resource is left to placement (``partition``/``*_per_node``: auto)."""
        return "auto" in (self.partition, self.gpus_per_node, self.npus_per_node)

    @property
    def tasks_per_node(self) -> int:
        """One task (rank) per device; one task on a CPU-only node."""
        return max(1, self.devices_per_node)

    @property
    def world_size(self) -> int:
        """The number of ranks: the one definition, used by render, submit and the checks."""
        return self.tasks_per_node * self.nodes


class EnvSpec(_Strict):
    conda: Optional[str] = None   # env name or prefix path
    venv: Optional[str] = None    # path of a virtualenv
    modules: list[str] = []       # `module load` arguments
    vars: dict[str, str] = {}     # extra environment variables
    python: Optional[str] = None  # interpreter on the compute node

    _single = field_validator("conda", "venv", "python")(_one_line)

    @field_validator("modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        for item in v:
            _one_line(item)
        return v

    @field_validator("vars", mode="before")
    @classmethod
    def _vars(cls, v: Any) -> Any:
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str) or not ENV_NAME.match(k)]
            if bad:
                raise ValueError(f"invalid environment variable name {bad[0]!r}: use letters, digits and _, "
                                 "not starting with a digit")
            return {k: ("" if val is None else str(val).lower() if isinstance(val, bool) else str(val))
                    for k, val in v.items()}
        return v

    @model_validator(mode="after")
    def _one_env(self) -> "EnvSpec":
        if self.conda and self.venv:
            raise ValueError("conda and venv are both set; choose one environment")
        return self
