"""hpcft cache ls | verify [NAME] | rm NAME: inspect, re-hash and prune the shared cache."""

from __future__ import annotations

import sys

EPILOG = """examples:
  hpcft cache ls                      # name, aliases, source, revision, size, staged time
  hpcft cache verify                  # re-hash every staged file against its manifest
  hpcft cache verify bert-base-uncased
  hpcft cache rm glue/mrpc
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("cache", help="list, verify or remove staged assets",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", metavar="DIR", help="cache dir (default: HPCFT_CACHE or cache_dir of the config)")
    csub = p.add_subparsers(dest="cache_command", metavar="ls|verify|rm")
    ls = csub.add_parser("ls", help="list staged assets")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_ls)
    ver = csub.add_parser("verify", help="re-hash staged files against the manifests (exit 1 on mismatch)")
    ver.add_argument("name", nargs="?", metavar="NAME")
    ver.add_argument("--kind", choices=["model", "dataset", "metric"])
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=run_verify)
    rm = csub.add_parser("rm", help="remove a staged asset")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--kind", choices=["model", "dataset", "metric"])
    rm.set_defaults(func=run_rm)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _cache(args):
    from pathlib import Path

    from ..stage.store import Cache
    from .common import settings

    return Cache(Path(args.cache).expanduser() if args.cache else settings().cache)


def run_ls(args) -> int:
    from ..stage.manage import rows
    from ..stage.progress import human
    from .common import print_json, table

    cache = _cache(args)
    data = rows(cache)
    if args.json:
        print_json({"cache": str(cache.root), "assets": data})
        return 0
    if not data:
        print(f"nothing staged in {cache.root} (hpcft stage MODEL [DATASET ...])")
        return 0
    print(table([(r["kind"], r["name"], ",".join(r["aliases"]), r["source"], (r["sha"] or "")[:12],
                  human(r["size"]), (r["staged_at"] or "")[:19]) for r in data],
                ["KIND", "NAME", "ALIASES", "SOURCE", "REVISION", "SIZE", "STAGED"]))
    return 0


def run_verify(args) -> int:
    from ..stage.manage import verify
    from .common import print_json

    cache = _cache(args)
    found, problems = verify(cache, args.name, args.kind)
    if args.json:
        print_json({"ok": not problems, "assets": len(found), "problems": [p.__dict__ for p in problems]})
        return 1 if problems else 0
    for p in problems:
        print(f"✗ {p.line()}", file=sys.stderr)
    nfiles = sum(len(m.get("files", [])) for m in found)
    if problems:
        print(f"{len(problems)} problem(s) in {len(found)} asset(s); re-stage with `hpcft cache rm NAME` then "
              "`hpcft stage NAME`", file=sys.stderr)
        return 1
    print(f"✓ {len(found)} asset(s), {nfiles} files match their manifests")
    return 0


def run_rm(args) -> int:
    from ..stage.manage import remove

    cache = _cache(args)
    for m in remove(cache, args.name, args.kind):
        print(f"removed {m['kind']} {m['repo_id']}" + (f":{m['config']}" if m.get("config") else ""))
    return 0
