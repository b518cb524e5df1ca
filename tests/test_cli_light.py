"""The CLI runs on login nodes: it must never import the training stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "transformers", "datasets", "evaluate", "deepspeed", "accelerate", "torch_npu",
         "modelscope.models", "modelscope.pipelines", "modelscope.trainers", "sklearn", "scipy", "matplotlib"}


def imported_modules(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import sys; from hpcft.cli.main import main; sys.exit(main())", *args],
                          capture_output=True, text=True, cwd=ROOT)
    mods = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.split("|")[-1].strip())
    assert mods, proc.stderr[-2000:]
    return mods


def heavy_in(mods: set[str]) -> set[str]:
    return {m for m in mods if m in HEAVY or any(m.startswith(h + ".") for h in HEAVY)}


@pytest.mark.parametrize("args", [
    ["--help"],
    ["submit", "--help"],
    ["render", "tests/fixtures/jobs/gpu-conda.yaml"],
    ["submit", "--dry-run", "--executor", "local", "tests/fixtures/jobs/script-cpu.yaml"],
    ["runs"],
])
def test_cli_path_imports_no_training_stack(args):
    mods = imported_modules(*args)
    assert not heavy_in(mods), sorted(heavy_in(mods))
    assert "hpcft.cli.main" in mods


def test_every_command_has_help():
    from hpcft.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", name, "--help"], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 0 and "usage: hpcft" in proc.stdout, name
