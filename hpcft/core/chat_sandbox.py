"""A chat template rendered on the login side under a time and a size limit.

A chat template is a program written by whoever published (or staged) the model, and the
pre-flight runs it on the login node (:class:`hpcft.core.chat.TemplateTokenizer`). Jinja's
sandbox keeps it away from Python's internals, not from running for ever or building a huge
value: nested ``range(100000)`` loops, ``'x' * 10**9``, a string doubled in a loop. So the
template is compiled with every loop step, every output and every ``~`` routed through this
environment, and the operators, calls and filters that make values are checked before and
after they run:

* time: each of those looks at a deadline, :data:`MAX_SECONDS` per render and
  :data:`MAX_TOTAL_SECONDS` for all the renders of one template;
* size: the text written, and any single value built on the way, stay under
  :data:`MAX_CHARS` (or four times the conversation's own length, when that is more); an
  argument that would make more (a width, a repeat count, a format field) is refused before
  the call; and all the text built during one render stays under :data:`BUILT_FACTOR` times that.

Either limit raises :class:`RenderLimit`, one line naming the model; the pre-flight stops
there. A template within the limits renders exactly as in jinja's own sandbox (the same text,
tests/test_chat_templates.py). What is not bounded: one builtin step on a value already at
the size limit (sorting four million items) runs to its end before the deadline is seen.
"""

from __future__ import annotations

import functools
import json
import re
import time
from typing import Any, Callable, Optional

from jinja2 import nodes, pass_context
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from .errors import HpcftError

MAX_SECONDS = 2.0          # one render
MAX_TOTAL_SECONDS = 10.0   # every render of one template (one pre-flight)
MAX_CHARS = 4_000_000      # the text written, and any one value
INPUT_FACTOR = 4           # a long conversation may render to this many times its length
BUILT_FACTOR = 64          # all the text one render builds, in multiples of its size limit
MAX_INT_BITS = 100_000     # the largest integer an operator may make
MAX_JSON_INDENT = 64

LOOP, OUT, CONCAT = "hpcft.loop", "hpcft.out", "hpcft.concat"
# filters that never make text bigger than their input: no deep measure of a container first
_SHRINKING = frozenset({"length", "count", "first", "last", "list", "reverse", "select", "reject",
                        "selectattr", "rejectattr", "map", "items", "default", "d", "attr", "abs",
                        "bool", "int", "float", "round", "min", "max", "unique", "sort", "dictsort"})
_GROWING = frozenset({"replace", "join", "indent", "format", "sum", "tojson"})  # checked by _check_filter
_SIZED = (str, bytes, list, tuple, dict)
_now = time.monotonic
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d+|\*)?(?:\.(\d+|\*))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")


class RenderLimit(HpcftError):
    """A chat template that ran past the time or size limit (one line naming the model)."""

    exit_code = 2


def measure(value: Any, stop: int) -> tuple[int, int]:
    """(about how many characters ``value`` prints as, how deep it nests), counting a shared
    item each time it appears; stops counting once past ``stop``."""
    size = depth = 0
    stack = [(value, 1)]
    while stack and size <= stop:
        v, d = stack.pop()
        depth = max(depth, d)
        if isinstance(v, (str, bytes)):
            size += len(v) + 2
        elif isinstance(v, dict):
            size += 2 + 2 * len(v)
            stack.extend((x, d + 1) for kv in v.items() for x in kv)
        elif isinstance(v, (list, tuple, set, frozenset)):
            size += 2 + 2 * len(v)
            stack.extend((x, d + 1) for x in v)
        else:
            size += 4
    return size, depth


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Instrument(NodeTransformer):
    """Routes every loop, output and ``~`` of a parsed template through the environment's
    counters (as filters taking the context, which jinja never folds at compile time)."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, LOOP, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        node = self.generic_visit(node)
        first, *rest = [nodes.Const(n.data, lineno=n.lineno) if isinstance(n, nodes.TemplateData) else n
                        for n in node.nodes]
        node.nodes = [nodes.Filter(first, OUT, rest, [], None, None, lineno=node.lineno)]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        node = self.generic_visit(node)
        first, *rest = node.nodes
        return nodes.Filter(first, CONCAT, rest, [], None, None, lineno=node.lineno)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment (trim_blocks, lstrip_blocks, loop controls,
    ``tojson``, ``raise_exception``, ``strftime_now``) with the limits of the module docstring.
    ``model`` names the template's model in the refusal."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, model: str, *, seconds: float = MAX_SECONDS, total_seconds: float = MAX_TOTAL_SECONDS,
                 chars: int = MAX_CHARS):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        self.model, self.seconds, self.total_seconds, self.chars = model, seconds, total_seconds, chars
        self.spent = 0.0                      # seconds rendered so far, all renders
        self._deadline: Optional[float] = None
        self._over = ""                       # what the deadline stands for, in the refusal
        self._cap, self._written, self._built = chars, 0, 0
        self._conversation: Any = None        # measured once, when a value passes the size limit
        self.globals.pop("lipsum", None)      # random text of any length; no chat template uses it
        self.filters["tojson"] = _tojson
        self.globals["raise_exception"] = _raise
        self.globals["strftime_now"] = _strftime_now
        self.filters = {name: self._checked(name, f) for name, f in self.filters.items()}
        self.filters.update({LOOP: self._loop, OUT: self._out, CONCAT: self._concat})

    # ------------------------------------------------------------------ compile and render
    def compile_template(self, source: str):
        """The template, instrumented (a syntax error raises jinja's TemplateSyntaxError)."""
        tree = _Instrument().visit(self.parse(source))
        tree.set_environment(self)
        return self.from_string(tree)

    def render(self, template, conversation: Any, **context: Any) -> str:
        """``template.render(**context)`` within the limits. ``conversation`` (what the template is
        given) is measured only when a value passes :data:`MAX_CHARS`: a long one raises the limit."""
        left = self.total_seconds - self.spent
        if left <= 0:
            raise self.refused(f"{self.total_seconds:g} s in all")
        start = time.monotonic()
        self._deadline = start + min(self.seconds, left)
        self._over = f"{self.seconds:g} s" if self.seconds <= left else f"{self.total_seconds:g} s in all"
        self._cap, self._written, self._built, self._conversation = self.chars, 0, 0, conversation
        try:
            return template.render(**context)
        except RecursionError:
            raise self.refused("the depth of recursion Python allows") from None
        except MemoryError:
            raise self.refused("the memory available") from None
        finally:
            self.spent += time.monotonic() - start
            self._deadline = self._conversation = None
            self._cap = self.chars

    def refused(self, what: str) -> RenderLimit:
        return RenderLimit(f"chat template of {self.model}: rendering exceeded {what}; refused")

    # ------------------------------------------------------------------ the counters
    def _tick(self) -> None:
        if self._deadline is not None and _now() > self._deadline:
            raise self.refused(self._over)

    def _fits(self, size: int, what: str = "in one value") -> None:
        if size > self._cap and size > self._grown():
            raise self.refused(f"{self._cap} characters ({what})")

    def _grown(self) -> int:
        """The size limit of this render, raised once for a long conversation."""
        if self._conversation is not None:
            self._cap = max(self.chars, INPUT_FACTOR * measure(self._conversation, BUILT_FACTOR * self.chars)[0])
            self._conversation = None
        return self._cap

    def _sized(self, value: Any) -> Any:
        if isinstance(value, _SIZED):
            n = len(value)
            self._built += n
            if n > self._cap:
                self._fits(n)
            if self._built > BUILT_FACTOR * self._cap and self._built > BUILT_FACTOR * self._grown():
                raise self.refused(f"{BUILT_FACTOR * self._cap} characters (built in all)")
        return value

    def _deep(self, value: Any) -> int:
        if isinstance(value, (str, bytes)):
            return len(value)
        size = measure(value, self._cap)[0]
        if size > self._cap and self._conversation is not None and self._grown() >= size:
            size = measure(value, self._cap)[0]  # counted again up to the raised limit
        return size

    def _text(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        self._fits(self._deep(value))
        return str(value)

    @pass_context
    def _loop(self, context, iterable):
        for item in iterable:
            self._tick()
            yield item

    @pass_context
    def _out(self, context, value: Any, *more: Any) -> str:
        self._tick()
        text = value if type(value) is str else self._text(value)
        if more:
            text = "".join([text, *(v if type(v) is str else self._text(v) for v in more)])
        self._written += len(text)
        if self._written > self._cap:
            self._fits(self._written, "of output")
        return text

    @pass_context
    def _concat(self, context, *parts: Any) -> str:
        self._tick()
        texts = [self._text(p) for p in parts]
        self._fits(sum(map(len, texts)))
        return self._sized("".join(texts))

    # ------------------------------------------------------------------ what the template calls
    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # jinja's own signature
        __self._tick()
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, (str, bytes)):
            given = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
            __self._check_method(owner, getattr(__obj, "__name__", ""), args, given)
        return __self._sized(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, kept quick:
            joined = left + right  # no loop, so no tick; a string doubled in a loop meets the size limit
            if len(joined) > self._cap:
                self._fits(len(joined))
            return joined
        self._tick()
        if operator == "*":
            for n, seq in ((left, right), (right, left)):
                if _is_int(n) and isinstance(seq, (str, bytes, list, tuple)):
                    self._fits(max(n, 0) * self._deep(seq))
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise self.refused(f"{MAX_INT_BITS} bits (in one integer)")
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0:
            if max(left.bit_length() - 1, 0) * right > MAX_INT_BITS:
                raise self.refused(f"{MAX_INT_BITS} bits (in one integer)")
        elif operator == "%" and isinstance(left, (str, bytes)):
            self._check_percent(left, right)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, (list, tuple)):
            self._fits(self._deep(result))
        return self._sized(result)

    def _check_method(self, owner, name: str, args: tuple, kwargs: dict) -> None:
        """A str/bytes method: refused before it runs when its result would be too big."""
        params = (*args, *kwargs.values())
        self._check_ints(params)
        size = len(owner)
        if name == "replace" and len(args) >= 2 and isinstance(args[1], type(owner)):
            old, new = args[0], args[1]
            count = owner.count(old) if old else size + 1
            if len(args) > 2 and _is_int(args[2]) and args[2] >= 0:
                count = min(count, args[2])
            self._fits(size + count * max(0, len(new) - len(old)))
        elif name == "join" and args:
            items = args[0] if isinstance(args[0], (list, tuple)) else ()
            self._fits(size * len(items) + sum(self._deep(x) for x in items))
        elif name == "expandtabs":
            self._fits(size + owner.count(b"\t" if isinstance(owner, bytes) else "\t") * max(
                [8, *(p for p in params if _is_int(p))]))
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
            self._fits(size * max(longest, 1))
        elif name in ("format", "format_map") and isinstance(owner, str):
            for spec in _FORMAT_SPEC.findall(owner):
                self._check_ints(int(d) for d in re.findall(r"\d+", spec))
            values = list(args[0].values()) if name == "format_map" and args and isinstance(args[0], dict) else params
            biggest = max((self._deep(v) for v in values), default=0)
            self._fits(size + owner.count("{") * biggest)

    def _check_percent(self, fmt, values: Any) -> None:
        text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
        for width, precision in _PERCENT_FIELD.findall(text):
            self._check_ints(int(d) for d in (width, precision) if d.isdigit())
        items = list(values.values()) if isinstance(values, dict) else list(values) if isinstance(
            values, tuple) else [values]
        self._check_ints(items)
        self._fits(len(fmt) + text.count("%") * max((self._deep(v) for v in items), default=0))

    def _check_ints(self, values) -> None:
        for v in values:
            if _is_int(v) and abs(v) > self._cap:
                raise self.refused(f"{self._cap} characters (an argument of {v})")

    def _checked(self, name: str, f: Callable) -> Callable:
        """A filter that ticks the clock and refuses arguments or results over the size limit."""
        skip = 1 if _PassArg.from_obj(f) is not None else 0

        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            if len(args) > skip and name not in _SHRINKING:
                if type(args[skip]) is not str:  # a container printed: as long as all it holds
                    self._fits(self._deep(args[skip]))
                if len(args) > skip + 1 or kwargs:
                    self._check_ints((*args[skip + 1:], *kwargs.values()))
                if name in _GROWING:
                    self._check_filter(name, args[skip], args[skip + 1:], kwargs)
            return self._sized(f(*args, **kwargs))

        return run

    def _check_filter(self, name: str, value: Any, args: tuple, kwargs: dict) -> None:
        """The filters whose result can be much bigger than their input, before they run."""
        params = (*args, *kwargs.values())
        if name == "replace":
            self._check_method(str(value), "replace", (*args, *(kwargs[k] for k in ("old", "new", "count")
                                                               if k in kwargs)), {})
        elif name == "join" and isinstance(value, (list, tuple)):
            sep = kwargs.get("d", args[0] if args else "")
            self._fits(self._deep(value) + len(str(sep)) * len(value))
        elif name == "indent":
            width = kwargs.get("width", args[0] if args else 4)
            if isinstance(width, str):
                self._fits(self._deep(value) + (str(value).count("\n") + 1) * len(width))
        elif name == "format":
            self._check_percent(str(value), kwargs or tuple(args))
        elif name == "sum" and any(isinstance(v, (list, tuple)) for v in params):  # lists added up: quadratic
            items = value if isinstance(value, (list, tuple)) else ()
            self._fits(len(items) * self._deep(items), "built in all")
        elif name == "tojson":
            indent = kwargs.get("indent", args[1] if len(args) > 1 else None)
            width = indent if _is_int(indent) else len(indent) if isinstance(indent, str) else 0
            if width > MAX_JSON_INDENT:
                raise self.refused(f"{MAX_JSON_INDENT} characters (the indent of tojson)")
            size, depth = measure(value, self._cap)
            self._fits(size * (1 + depth * width))


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.now().strftime(fmt)
