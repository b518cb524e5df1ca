"""``hpcft tensorboard [RUN...]`` on the login side: which runs' event files, where the server's
folder is, and how it is started (here, or as a Slurm job with ``--submit``).

The server is :mod:`hpcft.worker.serving.tensorboard`: TensorBoard's app inside one authenticating
process, whose password-gated port is the only one it listens on (nothing on the node's loopback
for another user to reach), with a password made per server and written only to its 0600
``tensorboard.json`` in ``$HPCFT_HOME/tensorboard/<stamp>/`` (the job's script and logs go there
too).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Settings
from ..core.errors import ConfigError
from ..core.rundir import RunPaths
from ..runs.index import RunRecord

INFO_NAME = "tensorboard.json"


@dataclass
class Board:
    records: list[RunRecord]
    spec: str             # TensorBoard's --logdir_spec: NAME:DIR,...
    folder: Path          # the server's own folder (info file, script, logs)

    @property
    def info_path(self) -> Path:
        return self.folder / INFO_NAME


def event_dir(record: RunRecord) -> Path:
    return RunPaths(record.run_dir).tensorboard


def has_events(record: RunRecord) -> bool:
    d = event_dir(record)
    return d.is_dir() and any(p.name.startswith("events.out.tfevents") for p in d.rglob("*"))


def board(settings: Settings, records: list[RunRecord], named: bool) -> Board:
    """The runs to show (``named``: the user listed them, each must have event files; otherwise
    every run that has some) and a fresh server folder."""
    if named:
        missing = [r for r in records if not has_events(r)]
        if missing:
            raise ConfigError([f"hpcft tensorboard: run {r.run_id} has no TensorBoard event files in "
                               f"{event_dir(r)} (train.report_to: [tensorboard] writes them)" for r in missing])
    else:
        records = [r for r in records if has_events(r)]
        if not records:
            raise ConfigError([f"hpcft tensorboard: no run under {settings.runs} has TensorBoard event files "
                               "(train.report_to: [tensorboard] writes them)"])
    parts = []
    for r in records:
        d = str(event_dir(r))
        if "," in d:
            raise ConfigError([f"hpcft tensorboard: {d}: TensorBoard's --logdir_spec cannot take a ',' in a path"])
        parts.append(f"{re.sub(r'[,:]', '_', r.run_id)}:{d}")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = settings.home / "tensorboard" / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = settings.home / "tensorboard" / f"{stamp}-{n}"
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(folder, 0o700)
    return Board(records, ",".join(parts), folder)


def worker_args(b: Board, host: str, port: int, proxy_prefix: str = "") -> list[str]:
    args = ["--logdir-spec", b.spec, "--info-file", str(b.info_path), "--host", host, "--port", str(port)]
    return args + (["--proxy-prefix", proxy_prefix] if proxy_prefix else [])
