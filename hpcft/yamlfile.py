"""YAML loading that remembers line numbers, and pydantic errors rendered as
``file:line: field: message`` (one line per problem, all problems at once)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Loc = tuple  # a path of keys / indexes into the document


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 sexagesimal numbers: ``time: 01:30:00`` stays the
    string a Slurm user means, instead of the integer 5400."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


class YamlDoc:
    """A parsed YAML mapping plus the line of every key in it."""

    def __init__(self, data: dict, lines: dict[Loc, int], source: str):
        self.data = data
        self.lines = lines
        self.source = source

    def line_of(self, loc: Loc) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None


def _walk(node: yaml.Node, loc: Loc, out: dict[Loc, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            out[loc + (k,)] = key.start_mark.line + 1
            _walk(value, loc + (k,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[loc + (i,)] = item.start_mark.line + 1
            _walk(item, loc + (i,), out)


def parse_yaml(text: str, source: str) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = exc.problem or str(exc)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML syntax error: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the file must be a mapping of keys (name:, resources:, ...), "
                           f"not a {type(data).__name__}"])
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return YamlDoc(data, lines, source)


def load_yaml_file(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_yaml(text, str(path))


def _fields_at(model: type, loc: Loc) -> list[str]:
    """Valid field names of the (nested) pydantic model addressed by loc."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    from pydantic import BaseModel
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def render_validation_error(exc: Any, model: type, doc: YamlDoc | None, source: str) -> list[str]:
    """Turn a pydantic ValidationError into ``source:line: field: message`` lines."""
    problems: list[str] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic puts union-member tags in loc (e.g. 'int', 'str'); drop those it adds for unions
        loc = tuple(p for p in loc if p not in ("str", "int", "float", "bool", "list[str]", "dict[str,str]"))
        line = doc.line_of(loc) if doc else None
        where = f"{source}:{line}" if line else source
        etype = err["type"]
        if etype == "extra_forbidden":
            key = loc[-1]
            valid = _fields_at(model, loc[:-1])
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            field = _fmt_loc(loc[:-1])
            scope = f" in {field}" if loc[:-1] else ""
            problems.append(f"{where}: unknown key '{key}'{scope}{hint} (valid: {', '.join(valid)})")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if etype == "missing":
            msg = "required field is missing"
        elif "input" in err and etype not in ("value_error", "assertion_error") and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(f"{where}: {_fmt_loc(loc)}: {msg}")
    return problems


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_set_options(items: list[str]) -> list[tuple[str, Any]]:
    """``--set a.b=value`` pairs; the value is parsed as a YAML scalar/flow value."""
    out, problems = [], []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set resources.time=02:00:00")
            continue
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    if problems:
        raise ConfigError(problems)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
