"""Where a test suite's time goes: wall and CPU seconds per test and per lane.

As a pytest plugin (``-p devtools.testtime``, with ``HPCFT_TEST_TIMES=DIR``) every test
appends one JSON line to ``DIR/<worker>.jsonl``:

- ``wall``: seconds from the start of its setup to the end of its teardown;
- ``cpu``: user + sys of the pytest process and of the children it reaped in that time
  (the hpcft CLI and worker subprocesses a test runs);
- ``machine``: busy CPU seconds of the whole machine in that time (``/proc/stat``: user,
  nice, system, irq, softirq; not idle, iowait or steal). It also counts what the test made
  Slurm run, which is not a child of pytest. Under xdist several tests share it.

As a command it runs one lane and prints its breakdown::

    python -m devtools.testtime run --lane NAME [--top 25] -- python -m pytest ...
    python -m devtools.testtime durations DIR [--out tests/durations.json]

``durations`` writes each test module's summed wall time from a lane's records (the folder
``run`` names at the end): the order in which devtools/xdist_groups.py hands groups out.

It exits with the lane's exit code. The lane's ``CPU of the process tree`` is user + sys of the
command and every descendant it waited for (``RUSAGE_CHILDREN``), ``machine busy`` the whole
machine's busy seconds over the lane (Slurm's jobs included); their ratio to ``wall x cores``
says how much of the lane computed and how much waited (on Slurm, sleeps, polling).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

_BUSY = (0, 1, 2, 5, 6)   # /proc/stat cpu fields: user nice system (idle iowait) irq softirq


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in _BUSY if i < len(fields)) / ticks


def _proc_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ------------------------------------------------------------------ the pytest plugin
_out: Path | None = None


def pytest_configure(config):
    global _out
    folder = os.environ.get("HPCFT_TEST_TIMES")
    if not folder:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(folder).mkdir(parents=True, exist_ok=True)
    _out = Path(folder) / f"{worker}.jsonl"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _out is None:
        yield
        return
    w0, c0, m0 = time.monotonic(), _proc_cpu(), machine_cpu()
    yield
    rec = {"test": item.nodeid, "wall": round(time.monotonic() - w0, 3), "cpu": round(_proc_cpu() - c0, 3),
           "machine": round(machine_cpu() - m0, 3), "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
    with open(_out, "a", encoding="utf-8") as f:   # one short line per write: appends do not interleave
        f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------ the report
def load(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def report(folder: Path, *, lane: str, wall: float, tree_cpu: float, machine: float, top: int = 25,
           cores: int | None = None) -> str:
    cores = cores or os.cpu_count() or 1
    rows = load(folder)
    lines = [f"time: lane {lane}: {len(rows)} tests, wall {wall:.0f} s; CPU of the process tree {tree_cpu:.0f} s "
             f"({tree_cpu / max(wall * cores, 1e-9):.0%} of {cores} cores x wall); machine busy {machine:.0f} s "
             f"({machine / max(wall * cores, 1e-9):.0%}, incl. Slurm jobs)"]
    if rows:
        test_wall = sum(r["wall"] for r in rows)
        waiting = sum(max(r["wall"] - r["machine"], 0.0) for r in rows if r["worker"] == "main")
        lines.append(f"time: lane {lane}: summed test wall {test_wall:.0f} s"
                     + (f", of which not computing (wall - machine busy, serial tests) {waiting:.0f} s" if waiting else ""))
        lines.append(f"time: lane {lane}: the {min(top, len(rows))} slowest tests "
                     "(wall, CPU of pytest + its children, machine busy):")
        for r in sorted(rows, key=lambda r: -r["wall"])[:top]:
            lines.append(f"  {r['wall']:7.1f} s wall {r['cpu']:7.1f} s cpu {r['machine']:7.1f} s machine  {r['test']}")
    return "\n".join(lines)


def run_lane(cmd: list[str], *, lane: str, top: int) -> int:
    """Run one lane's command with HPCFT_TEST_TIMES set, then print its breakdown."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"hpcft-times-{lane}-"))
    env = {**os.environ, "HPCFT_TEST_TIMES": str(folder)}
    w0, m0 = time.monotonic(), machine_cpu()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc = subprocess.call(cmd, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, machine = time.monotonic() - w0, machine_cpu() - m0
    tree = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(report(folder, lane=lane, wall=wall, tree_cpu=tree, machine=machine, top=top), flush=True)
    print(f"time: lane {lane}: per-test records in {folder} (python -m devtools.testtime durations {folder})",
          flush=True)
    return rc


def write_durations(folder: Path, out: Path) -> dict:
    """Summed wall seconds per test module, written atomically to ``out``."""
    modules: dict[str, float] = {}
    for r in load(folder):
        module = r["test"].split("::", 1)[0]
        modules[module] = modules.get(module, 0.0) + r["wall"]
    data = {"about": "summed wall seconds per test module, longest first: the order the xdist groups start in "
                     "(devtools/xdist_groups.py); rewrite with python -m devtools.testtime durations DIR",
            "modules": {m: round(w, 1) for m, w in sorted(modules.items(), key=lambda kv: -kv[1])}}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.testtime")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("run", help="run one lane's command and print where its time went")
    rp.add_argument("--lane", required=True)
    rp.add_argument("--top", type=int, default=25)
    rp.add_argument("command", nargs=argparse.REMAINDER)
    dp = sub.add_parser("durations", help="write each module's summed wall time (tests/durations.json)")
    dp.add_argument("folder", type=Path)
    dp.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "durations.json")
    args = ap.parse_args(argv)
    if args.cmd == "durations":
        data = write_durations(args.folder, args.out)
        print(f"{args.out}: {len(data['modules'])} modules")
        return 0
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("run: give the lane's command after --")
    return run_lane(cmd, lane=args.lane, top=args.top)


if __name__ == "__main__":
    sys.exit(main())
