"""hpcft cache ls | verify [NAME] | rm NAME: inspect, re-hash and prune the shared cache."""

from __future__ import annotations

import sys

EPILOG = """examples:
  hpcft cache ls                      # name, aliases, source, revision, size, staged time
  hpcft cache verify                  # re-hash every staged file against its manifest
  hpcft cache verify bert-base-uncased
  hpcft cache rm glue/mrpc
  hpcft cache doctor                  # is the shared cache safe to share? (sticky folders, links, manifests)
  hpcft cache doctor --fix            # repair what you own; the rest names its owner
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("cache", help="list, verify or remove staged assets",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", metavar="DIR", help="cache dir (default: HPCFT_CACHE or cache_dir of the config)")
    csub = p.add_subparsers(dest="cache_command", metavar="ls|verify|rm|doctor")
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
    doc = csub.add_parser("doctor", help="check the permissions, links and manifests of a shared cache "
                                         "(exit 1 on findings left unfixed)")
    doc.add_argument("--fix", action="store_true", help="repair what you own (modes, group); report the rest")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=run_doctor)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _cache(args):
    from pathlib import Path

    from ..stage.layout import cache_for
    from .common import settings

    return cache_for(settings(), Path(args.cache).expanduser() if args.cache else None)


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


def _print_scripts(scripts) -> None:
    """The staged code (a metric's scripts, a model's remote code) for the admin to read and pin."""
    from ..stage.trusted_code import pin_yaml

    if not scripts:
        return
    print("staged code (read it, then pin it with trusted_code: in the cluster config):")
    for c in scripts:
        print(f"  {c.kind} {c.repo_id}: {c.path} sha256 {c.sha256 or '(not readable)'} (staged by {c.owner})"
              + ("  CHANGED since it was staged" if c.changed else ""))
    pins = pin_yaml(c for c in scripts if c.kind == "metric" and not c.changed)
    if pins.strip() != "trusted_code:":
        print(pins, end="")


def run_doctor(args) -> int:
    from ..stage.doctor import examine
    from ..stage.layout import modes_for
    from ..stage.trusted_code import staged_scripts
    from .common import print_json, settings

    cache = _cache(args)
    if not cache.root.is_dir():
        print(f"nothing to check: {cache.root} does not exist")
        return 0
    findings = examine(cache, modes_for(settings()), fix=args.fix)
    left = [f for f in findings if not f.fixed]
    scripts = staged_scripts(cache)
    if args.json:
        print_json({"cache": str(cache.root), "ok": not left, "findings": [f.__dict__ for f in findings],
                    "scripts": [{"kind": c.kind, "repo_id": c.repo_id, "path": str(c.path), "owner": c.owner,
                                 "sha256": c.sha256, "changed": c.changed} for c in scripts]})
        return 1 if left else 0
    _print_scripts(scripts)
    for f in findings:
        print(f.line(), file=sys.stderr if not f.fixed else sys.stdout)
    if left:
        print(f"{len(left)} finding(s) in {cache.root}" + ("" if args.fix else "; `hpcft cache doctor --fix` repairs "
              "what you own") + "; the rest needs its owner or the cache admin (docs/staging.md, Security model)",
              file=sys.stderr)
        return 1
    print(f"✓ {cache.root}: shared folders sticky, staged files read-only for the group, no foreign links, "
          "every manifest trusted" + (f" ({len(findings)} fixed)" if findings else ""))
    return 0
