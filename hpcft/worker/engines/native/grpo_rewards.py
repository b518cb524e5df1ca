"""The reward functions of a GRPO run (``train.rewards``) as TRL's ``GRPOTrainer`` calls them:
built-ins from :mod:`hpcft.core.rewards`, and a user's ``file.py:function``, run from exactly the
bytes whose sha256 the pre-flight recorded in the job (a file changed since submit is refused,
and the bytes hashed are the bytes run, so a swap after the check never runs).
"""

from __future__ import annotations

import functools
import hashlib
import sys
import types
from pathlib import Path
from typing import Callable

from hpcft.core.errors import TrustError
from hpcft.core.rewards import BUILTIN
from hpcft.core.trusted_code import read_script
from hpcft.worker.errors import DataFormatError


def build(t) -> tuple[list[Callable], list[float]]:
    """(functions, weights) in the job's order; each function named as its metrics are."""
    funcs, weights = [], []
    for r in t.rewards:
        if r.name:
            base, _ = BUILTIN[r.name]
            f = functools.partial(base, max_completion_length=t.grpo.max_completion_length) \
                if r.name == "length_penalty" else base
        else:
            f = user_function(r)
        funcs.append(_named(f, r.label))
        weights.append(float(r.weight))
    return funcs, weights


def _named(f: Callable, label: str) -> Callable:
    def reward(*args, **kw):
        try:
            return f(*args, **kw)
        except KeyError as exc:   # a column the reward reads is not in the rows
            raise DataFormatError(f"reward {label}: {exc.args[0] if exc.args else exc}") from None

    reward.__name__ = reward.__qualname__ = label
    return reward


def user_function(r) -> Callable:
    """The user's reward function, from the bytes the pre-flight hashed."""
    path = Path(r.file)
    try:
        data, _ = read_script(path)
    except OSError as exc:
        raise DataFormatError(f"reward {r.function}: cannot read {path} ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if not r.sha256:
        raise TrustError(f"reward {r.function}: no sha256 recorded for it; submit the job with hpcft submit, "
                         "which lists and records it")
    if digest != r.sha256:
        raise TrustError(f"reward {r.function}: {path} changed since the job was submitted (sha256 {digest}, "
                         f"recorded {r.sha256}); submit the job again to run the new code")
    module = types.ModuleType(f"hpcft_reward_{path.stem}")
    module.__file__ = str(path)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)   # its own helper modules beside it
    try:
        exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own code, hash checked
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported as such
        raise DataFormatError(f"reward {r.function}: {path} does not import: {type(exc).__name__}: {exc}") from None
    f = getattr(module, r.func_name, None)
    if not callable(f):
        raise DataFormatError(f"reward {r.function}: {path} defines no function {r.func_name!r}")
    return f
