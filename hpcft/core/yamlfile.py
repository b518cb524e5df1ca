"""YAML loading that remembers line numbers, and pydantic errors rendered as
``file:line: field: message`` (one line per problem, all problems at once)."""

from __future__ import annotations

import difflib
import re
import time
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


# Bounds on what one YAML document may cost. A job file is a few dozen values; these stop
# alias bombs ("billion laughs"), runaway nesting and huge files long before they hurt.
MAX_BYTES = 1_000_000      # file size
MAX_NODES = 100_000        # values after aliases are expanded
MAX_DEPTH = 64             # nesting of mappings and lists
MAX_SECONDS = 10.0         # wall time to read one document

_TAG = "tag:yaml.org,2002:"
_MERGE = _TAG + "merge"
_SCALAR_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str", "timestamp")}
_BAD = object()  # a value that was refused (its problem is recorded); dropped from the data


class _SyntaxProblem(ConfigError):
    """Text that is not YAML (a ``--set`` value falls back to the plain text)."""


class _Refused(Exception):
    """The document cannot be read at all (too big, too deep, recursive)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _BoundedLoader(_Loader):
    """Composes a node graph (no Python objects are built here), refusing documents nested
    deeper than MAX_DEPTH, with more than MAX_NODES nodes, or taking longer than MAX_SECONDS."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._count = 0
        self.deadline = time.monotonic() + MAX_SECONDS  # composing and building together

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            mark = self.peek_event().start_mark
            if self._depth > MAX_DEPTH:
                raise _Refused(mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
            self._count += 1
            if self._count > MAX_NODES:
                raise _Refused(mark.line + 1, f"more than {MAX_NODES} values")
            if self._count % 1024 == 0 and time.monotonic() > self.deadline:
                raise _Refused(mark.line + 1, f"took more than {MAX_SECONDS:g} s to read")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Turns a composed node graph into plain dicts/lists/scalars, expanding aliases and
    merge keys with a count, and recording the line of every key. Problems that leave the
    rest readable (duplicate keys, keys that are not text, YAML tags) are collected."""

    def __init__(self, loader: _BoundedLoader, source: str, with_lines: bool):
        self.loader = loader
        self.source = source
        self.with_lines = with_lines
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[int | None, str]] = []
        self.bad: set[Loc] = set()
        self.count = 0
        self.open: set[int] = set()  # ids of the collections being built: a revisit is a cycle

    def problem(self, node: yaml.Node, loc: Loc, message: str) -> None:
        line = _line(node) if self.with_lines else None
        where = f"{self.source}:{line}" if line else self.source
        field = f"{_fmt_loc(loc)}: " if loc else ""
        self.problems.append((line, f"{where}: {field}{message}"))

    def build(self, node: yaml.Node, loc: Loc, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:  # point at the top-level key whose value blew up
            line = self.lines.get(loc[:1]) or _line(node)
            raise _Refused(line, f"aliases expand to more than {MAX_NODES} values (an alias bomb?); "
                                 "a job file needs a few dozen")
        if depth > MAX_DEPTH:
            raise _Refused(_line(node), f"nested more than {MAX_DEPTH} levels deep")
        if self.count % 1024 == 0 and time.monotonic() > self.loader.deadline:
            raise _Refused(_line(node), f"took more than {MAX_SECONDS:g} s to read")
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                return self.refuse_tag(node, loc)
            return self.scalar(node)
        if id(node) in self.open:
            raise _Refused(_line(node), "an alias refers to a value that contains it (recursive alias)")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _TAG + "seq":
                    return self.refuse_tag(node, loc)
                out = []
                for item in node.value:
                    if self.with_lines:
                        self.lines[loc + (len(out),)] = _line(item)
                    value = self.build(item, loc + (len(out),), depth + 1)
                    if value is not _BAD:
                        out.append(value)
                return out
            if node.tag != _TAG + "map":
                return self.refuse_tag(node, loc)
            return self.mapping(node, loc, depth)
        finally:
            self.open.discard(id(node))

    def scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.loader.construct_object(node)
        except ValueError:  # 2024-13-45, a 5000-digit int, !!int abc: keep the text, the schema judges it
            return node.value

    def refuse_tag(self, node: yaml.Node, loc: Loc) -> Any:
        self.problem(node, loc, f"YAML tag {_tag_name(node.tag)} is not allowed; write a plain value")
        self.bad.add(loc)
        return _BAD

    def key(self, node: yaml.Node, loc: Loc) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            self.problem(node, loc, f"a key must be text, not a {kind}")
            return None
        if node.tag not in _SCALAR_TAGS:
            self.problem(node, loc, f"YAML tag {_tag_name(node.tag)} is not allowed on a key")
            return None
        value = self.scalar(node)
        if not isinstance(value, str):
            self.problem(node, loc, f"key {_show(node.value)} is read as {_show(value)}, not text; "
                                    f"quote it (\"{node.value[:40]}\": ...)")
            return None
        return value

    def mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> dict:
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            key = self.key(key_node, loc)
            if key is None:
                continue
            line = _line(key_node)
            if key in first:
                at = f" (first at line {first[key]})" if self.with_lines else ""
                self.problem(key_node, loc + (key,), f"duplicate key{at}")
            else:
                first[key] = line
            if self.with_lines:
                self.lines[loc + (key,)] = line
            value = self.build(value_node, loc + (key,), depth + 1)
            if value is _BAD:
                out.pop(key, None)
            else:
                out[key] = value
        for merge in merges:  # YAML merge keys: explicit keys win, then earlier merge sources
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.problem(merge, loc, "<<: merges a mapping or a list of mappings (<<: *defaults)")
                    continue
                saved, self.lines = self.lines, {}
                merged = self.build(source, loc, depth)
                merged_lines, self.lines = self.lines, saved
                for key, value in (merged.items() if isinstance(merged, dict) else ()):
                    if key not in out:
                        out[key] = value
                        under = loc + (key,)
                        self.lines.update({k: v for k, v in merged_lines.items() if k[:len(under)] == under})
        return out


def _syntax_error(exc: yaml.YAMLError, text: str, source: str) -> ConfigError:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[:exc.position].count("\n") + 1
        return _SyntaxProblem([f"{source}:{line}: control character 0x{exc.character:02x} is not allowed "
                               "in a YAML file"])
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):  # "expected a single document ... but found another"
        problem = f"{context} {problem}"
    return _SyntaxProblem([f"{where}: YAML syntax error: {' '.join(problem.split())}"])


def _compose(text: str, source: str, with_lines: bool) -> tuple[Any, _Builder | None, yaml.Node | None]:
    """(data, builder, root node); data is None for an empty document."""
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, source) from None
    builder = _Builder(loader, source, with_lines)
    try:
        node = loader.get_single_node()
        data = builder.build(node, (), 0) if node is not None else None
    except _Refused as exc:
        where = f"{source}:{exc.line}" if exc.line and with_lines else source
        raise ConfigError([f"{where}: {exc.message}"]) from None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, source) from None
    finally:
        loader.dispose()
    return data, builder, node


def yaml_load(text: str, source: str = "<yaml>") -> Any:
    """A YAML value with the same bounds and refusals as a file, without line numbers."""
    if len(text) > MAX_BYTES:
        raise ConfigError([f"{source}: longer than {MAX_BYTES // 1_000_000} MB"])
    data, builder, _ = _compose(text, source, with_lines=False)
    if builder.problems:
        raise ConfigError([p for _, p in _unique(builder.problems)])
    return None if data is _BAD else data


def _unique(problems: list[tuple[int | None, str]]) -> list[tuple[int | None, str]]:
    return list(dict.fromkeys(problems))  # an alias repeats its anchor's problems


def sorted_problems(problems: list[tuple[int | None, str]]) -> list[str]:
    """Problem lines in file order; those without a line number last (stable)."""
    ordered = sorted(_unique(problems), key=lambda p: (p[0] is None, p[0] or 0))
    return [text for _, text in ordered]


class YamlDoc:
    """A parsed YAML mapping, the line of every key in it, and the problems found while
    reading it that leave the rest usable (duplicate keys, keys that are not text, tags)."""

    def __init__(self, data: dict, lines: dict[Loc, int], source: str,
                 problems: list[tuple[int | None, str]] = (), bad: set[Loc] = frozenset()):
        self.data = data
        self.lines = lines
        self.source = source
        self.problems = list(problems)
        self.bad = set(bad)  # locs whose value was refused: schema errors there are noise
        self.overridden: dict[Loc, str] = {}  # loc -> where its value came from instead (--set)

    def line_of(self, loc: Loc) -> int | None:
        loc = tuple(loc)
        if any(loc[:n] in self.overridden for n in range(1, len(loc) + 1)):
            return None
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def where(self, loc: Loc) -> tuple[int | None, str]:
        """(line, "file:line") for a problem at loc; "--set KEY" for a value given on the command line."""
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.overridden:
                return None, self.overridden[loc[:n]]
        line = self.line_of(loc)
        return line, f"{self.source}:{line}" if line else self.source

    def is_bad(self, loc: Loc) -> bool:
        return any(tuple(loc)[:n] in self.bad for n in range(len(loc) + 1))

    def override(self, loc: Loc, label: str) -> None:
        self.overridden[tuple(loc)] = label


def parse_yaml(text: str, source: str, empty_ok: bool = True) -> YamlDoc:
    """Parse a YAML mapping (a job or config file), bounded and line-tracked."""
    if len(text) > MAX_BYTES:
        raise ConfigError([f"{source}: {len(text)} characters; a YAML file hpcft reads is at most "
                           f"{MAX_BYTES // 1_000_000} MB"])
    data, builder, node = _compose(text, source, with_lines=True)
    if data is _BAD:  # the whole document carries a tag such as !!python/object
        raise ConfigError(sorted_problems(builder.problems))
    if data is None:  # nothing, only comments, or a lone null
        if empty_ok:
            return YamlDoc({}, {}, source)
        raise ConfigError([f"{source}: the file is empty; a job file is a mapping such as "
                           "'name: ...' with 'train:' or 'script:'"])
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else f"single value ({data!r:.40})"
        raise ConfigError([f"{source}:{_line(node)}: the file must be a mapping of keys (key: value lines), "
                           f"not a {kind}"])
    return YamlDoc(data, builder.lines, source, _unique(builder.problems), builder.bad)


def load_yaml_file(path: str | Path, empty_ok: bool = True) -> YamlDoc:
    """Read and parse a YAML file; every way it can be unreadable is one ConfigError line."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:  # a bounded read: a pipe or /dev/zero never exhausts memory
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a YAML file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied: you cannot read this file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_BYTES // 1_000_000} MB; a YAML file hpcft reads is "
                           "a few kB (is this the right file?)"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
                           "save the file as UTF-8"]) from None
    return parse_yaml(text.removeprefix("\ufeff"), str(path), empty_ok=empty_ok)


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
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _show(value: Any, width: int = 60) -> str:
    """A value for a one-line message: repr (so newlines stay escaped), shortened."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = part if part.isprintable() and len(part) <= 60 else _show(part)
        out += f".{name}" if out else name
    return out or "(top level)"


def validation_problems(exc: Any, model: type, doc: YamlDoc | None, source: str) -> list[tuple[int | None, str]]:
    """A pydantic ValidationError as (line, ``source:line: field: message``) pairs."""
    problems: list[tuple[int | None, str]] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic puts union-member tags in loc (e.g. 'int', 'str'); drop those it adds for unions
        loc = tuple(p for p in loc if p not in ("str", "int", "float", "bool", "list[str]", "dict[str,str]"))
        if doc is not None and doc.is_bad(loc):
            continue  # its value was refused while reading; that problem is already listed
        line, where = doc.where(loc) if doc is not None else (None, source)
        etype = err["type"]
        if etype == "extra_forbidden":
            key = loc[-1]
            valid = _fields_at(model, loc[:-1])
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            field = _fmt_loc(loc[:-1])
            scope = f" in {field}" if loc[:-1] else ""
            problems.append((line, f"{where}: unknown key {_show(key)}{scope}{hint} (valid: {', '.join(valid)})"))
            continue
        msg = " ".join(str(err["msg"]).split())
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if etype == "missing":
            msg = "required field is missing"
        elif "input" in err and etype not in ("value_error", "assertion_error") and not isinstance(err["input"], dict):
            msg = f"{msg} (got {_show(err['input'])})"
        problems.append((line, f"{where}: {_fmt_loc(loc)}: {msg}"))
    return problems


def render_validation_error(exc: Any, model: type, doc: YamlDoc | None, source: str) -> list[str]:
    """A pydantic ValidationError as ``source:line: field: message`` lines, in file order."""
    return sorted_problems(validation_problems(exc, model, doc, source))


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
            value = yaml_load(raw, f"--set {key}") if raw.strip() else ""
        except _SyntaxProblem:
            value = raw  # not YAML: the text as given (the schema still judges it)
        except ConfigError as exc:  # an alias bomb, a tag, a duplicate key...
            problems += exc.lines()
            continue
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
