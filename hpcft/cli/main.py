"""``hpcft``: the entry point. Thin: parse, dispatch, map HpcftError to exit codes."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..core.errors import ConfigError, HpcftError

# command modules, in help order; each defines register(subparsers) and run(args) -> int
COMMANDS = ["stage", "cache", "submit", "preprocess", "render", "check", "status", "logs", "cancel", "runs", "show",
            "export", "compare", "eval", "predict", "serve", "tensorboard"]

EPILOG = """examples:
  hpcft stage bert-base-uncased glue/mrpc     # on the login node: fetch into the shared cache
  hpcft submit jobs/mrpc-bert-gpu.yaml        # validate, pre-flight, sbatch
  hpcft logs -f                               # follow the latest run until it ends
  hpcft runs                                  # recent runs with state and headline metric
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcft", description="Reliable offline fine-tuning on Slurm clusters.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hpcft.cli.cmd_{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        # the interpreter's last garbage collection took 50-90 ms of every command (bench_cli); nothing
        # that outlives main needs collecting, so the objects made so far are frozen out of it
        import gc

        gc.freeze()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HpcftError as exc:
        # config problems already start with "file:line:"; others get a prefix
        prefix = "" if isinstance(exc, ConfigError) else "hpcft: error: "
        for line in exc.lines():
            print(f"{prefix}{line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpcft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
